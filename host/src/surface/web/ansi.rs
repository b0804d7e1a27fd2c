//! ANSI colours of a log line, for the page: SGR sequences (`ESC [ … m`) become styled runs of
//! text. The stored log keeps them as protocol's visible escape (`\x1b[31m`, control characters
//! are never stored raw), so both that spelling and a raw ESC are recognised.
//!
//! Invariant: the output is runs of plain text and class names from a fixed set (`a-b`, `a-f1`,
//! …); the text is escaped by the template like any other text, and no part of the input ever
//! becomes markup or an attribute. `assets/sdci.js` implements the same rules for streamed lines.

/// A run of text with its classes (empty: unstyled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run<'a> {
    pub class: String,
    pub text: &'a str,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn class(&self) -> String {
        let mut c: Vec<String> = Vec::new();
        if self.bold {
            c.push("a-b".into());
        }
        if self.dim {
            c.push("a-d".into());
        }
        if self.italic {
            c.push("a-i".into());
        }
        if self.underline {
            c.push("a-u".into());
        }
        if let Some(f) = self.fg {
            c.push(format!("a-f{f}"));
        }
        if let Some(b) = self.bg {
            c.push(format!("a-g{b}"));
        }
        c.join(" ")
    }

    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = if params.is_empty() {
            vec![0]
        } else {
            params
                .split(';')
                .map(|p| p.parse().unwrap_or(u16::MAX))
                .collect()
        };
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false
                }
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                c @ 90..=97 => self.fg = Some((c - 90 + 8) as u8),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some((c - 40) as u8),
                c @ 100..=107 => self.bg = Some((c - 100 + 8) as u8),
                49 => self.bg = None,
                c @ (38 | 48) => {
                    // 38;5;N (the 16 basic colours only) or 38;2;R;G;B (ignored).
                    let colour = match codes.get(i + 1) {
                        Some(5) => {
                            let n = codes.get(i + 2).copied();
                            i += 2;
                            n.filter(|n| *n < 16).map(|n| n as u8)
                        }
                        Some(2) => {
                            i += 4;
                            None
                        }
                        _ => None,
                    };
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The start of an SGR sequence at the beginning of `s`: its length up to the parameters.
fn sgr_start(s: &str) -> Option<usize> {
    if s.starts_with("\\x1b[") {
        Some(5)
    } else if s.starts_with("\u{1b}[") {
        Some(2)
    } else {
        None
    }
}

/// Splits a line into styled runs; SGR sequences are consumed, everything else is text.
pub fn runs(line: &str) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut style = Style::default();
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        if let Some(open) = sgr_start(rest) {
            let params_len = rest[open..]
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b';')
                .count();
            if rest.as_bytes().get(open + params_len) == Some(&b'm') {
                if start < i {
                    out.push(Run {
                        class: style.class(),
                        text: &line[start..i],
                    });
                }
                style.apply(&rest[open..open + params_len]);
                i += open + params_len + 1;
                start = i;
                continue;
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    if start < line.len() {
        out.push(Run {
            class: style.class(),
            text: &line[start..],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(line: &str) -> Vec<(String, &str)> {
        runs(line).into_iter().map(|r| (r.class, r.text)).collect()
    }

    #[test]
    fn colours_become_classes_and_the_sequences_disappear() {
        assert_eq!(
            show("ok \\x1b[1;31mFAILED\\x1b[0m test_x"),
            [
                (String::new(), "ok "),
                ("a-b a-f1".into(), "FAILED"),
                (String::new(), " test_x")
            ]
        );
        assert_eq!(
            show("\u{1b}[92mgreen\u{1b}[39m"),
            [("a-f10".into(), "green")]
        );
        assert_eq!(show("\\x1b[38;5;4mblue"), [("a-f4".into(), "blue")]);
    }

    #[test]
    fn anything_else_stays_text() {
        assert_eq!(
            show("\\x1b[2K<b>\\x1b[31"),
            [(String::new(), "\\x1b[2K<b>\\x1b[31")]
        );
        assert_eq!(show(""), []);
    }
}
