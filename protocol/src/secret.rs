//! [`Secret`]: a string that must never reach a log, and the one rule for reading it from a file.
//!
//! Every program keeps its secrets (tokens, keys, passwords, webhook secrets) in files named by
//! its configuration, so systemd credentials and `echo secret > file` both work. The rule, the
//! same in every program: the file's contents are the secret, except that **one** trailing line
//! ending (`\n` or `\r\n`, as `echo` or a Windows editor writes it) is ignored. Nothing else is
//! trimmed: a space is part of the secret. A file that is empty after that is refused, naming
//! the path, never the content.

use crate::ProtocolError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A string that must never appear in a log: `Debug` prints `Secret(***)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself. Call sites are the places a reviewer should look at.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file by the module's rule: one trailing `\n` or `\r\n` is ignored,
    /// nothing else; an unreadable or empty file is an error naming `path`.
    pub fn read_file(path: &Path) -> Result<Self, ProtocolError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProtocolError::SecretUnreadable {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Self::from_file_contents(text).ok_or_else(|| ProtocolError::SecretEmpty {
            path: path.to_owned(),
        })
    }

    /// The trimming rule of [`Secret::read_file`] on contents already read; `None` when nothing
    /// is left.
    pub fn from_file_contents(mut text: String) -> Option<Self> {
        if text.ends_with("\r\n") {
            text.truncate(text.len() - 2);
        } else if text.ends_with('\n') {
            text.truncate(text.len() - 1);
        }
        (!text.is_empty()).then_some(Self(text))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(contents: &[u8]) -> Result<Secret, ProtocolError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, contents).unwrap();
        Secret::read_file(&path)
    }

    #[test]
    fn a_secret_file_is_its_contents_without_one_trailing_newline() {
        assert_eq!(read(b"ghp_abc\n").unwrap().expose(), "ghp_abc");
        assert_eq!(read(b"ghp_abc\r\n").unwrap().expose(), "ghp_abc");
        assert_eq!(read(b"ghp_abc").unwrap().expose(), "ghp_abc");
    }

    #[test]
    fn only_one_line_ending_is_trimmed_and_nothing_else() {
        assert_eq!(read(b"abc\n\n").unwrap().expose(), "abc\n");
        assert_eq!(read(b" abc \n").unwrap().expose(), " abc ");
        assert_eq!(read(b"abc\r").unwrap().expose(), "abc\r");
        assert_eq!(
            read(b"-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n")
                .unwrap()
                .expose(),
            "-----BEGIN KEY-----\nAAAA\n-----END KEY-----"
        );
    }

    #[test]
    fn an_empty_secret_file_is_refused_naming_the_path() {
        for empty in [&b""[..], b"\n", b"\r\n"] {
            let err = read(empty).unwrap_err();
            assert!(
                matches!(err, ProtocolError::SecretEmpty { ref path } if path.ends_with("secret")),
                "{empty:?}: {err:?}"
            );
            assert!(err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn an_unreadable_secret_file_is_refused_naming_the_path() {
        let err = Secret::read_file(Path::new("/nonexistent/sdci/token")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sdci/token"), "{err}");
        assert!(matches!(err, ProtocolError::SecretUnreadable { .. }));
    }

    #[test]
    fn errors_about_a_secret_file_never_show_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"hunter2\xff").unwrap();
        let err = Secret::read_file(&path).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_of_a_secret_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }
}
