//! XDR (RFC 4506), as libvirt's remote protocol uses it: big-endian 32-bit words, strings and
//! opaques length-prefixed and padded to 4 bytes, optional values as a bool then the value.
//!
//! Invariant: decoding never trusts a length from the wire beyond the bytes actually present
//! (every read is bounds-checked), so a hostile or truncated reply is an error, not a panic.

/// Appends XDR values to a buffer.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Self {
        Self(Vec::new())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn opaque_fixed(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self.pad(b.len())
    }
    pub fn string(&mut self, s: &str) -> &mut Self {
        // Lengths are bounded by the message size (far below u32::MAX) at the call sites.
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s.as_bytes());
        self.pad(s.len())
    }
    pub fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.u32(1).string(s),
            None => self.u32(0),
        }
    }
    fn pad(&mut self, len: usize) -> &mut Self {
        let pad = (4 - len % 4) % 4;
        self.0.resize(self.0.len() + pad, 0);
        self
    }
}

/// Why a reply could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Reads XDR values from a byte slice.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("reply truncated at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.u32()? != 0)
    }
    pub fn opaque_fixed(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let b = self.take(n)?;
        self.take((4 - n % 4) % 4)?;
        Ok(b)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.opaque_fixed(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("string is not UTF-8".into()))
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        if self.bool()? {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }
    /// A variable-length array's count, refused when it could not fit in what is left (each
    /// element takes at least 4 bytes).
    pub fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > (self.buf.len() - self.pos) / 4 {
            return Err(DecodeError(format!("array of {n} elements cannot fit")));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_padded_to_four_bytes_and_read_back() {
        let mut e = Enc::new();
        e.string("abcde")
            .opt_string(None)
            .opt_string(Some("x"))
            .i32(-2);
        assert_eq!(e.0.len(), 4 + 8 + 4 + 4 + 4 + 4 + 4);
        let mut d = Dec::new(&e.0);
        assert_eq!(d.string().unwrap(), "abcde");
        assert_eq!(d.opt_string().unwrap(), None);
        assert_eq!(d.opt_string().unwrap().as_deref(), Some("x"));
        assert_eq!(d.i32().unwrap(), -2);
    }

    #[test]
    fn a_length_past_the_end_is_an_error_not_a_panic() {
        let mut e = Enc::new();
        e.u32(1_000_000);
        assert!(Dec::new(&e.0).string().is_err());
        assert!(Dec::new(&e.0).count().is_err());
        assert!(Dec::new(&[0, 0]).u32().is_err());
    }
}
