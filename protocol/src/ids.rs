//! Validated identifiers. Each type can only be built by parsing, so holding one is proof that it
//! passed the rules below. Serde goes through the same parser.

use crate::ProtocolError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        /// Read-only access as `&str` (the value stays valid: there is no `DerefMut`).
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl TryFrom<String> for $name {
            type Error = ProtocolError;
            fn try_from(s: String) -> Result<Self, ProtocolError> {
                s.parse()
            }
        }
    };
}

/// A job's identity, also the qrexec service argument: `sdci.Run+<JobId>`.
///
/// Rules (`^[a-z0-9][a-z0-9-]{0,53}$`): 1–54 bytes of lowercase ASCII letters, digits and `-`, not
/// starting with `-`. So `sdci.Run+ID` stays within qrexec's 63-byte service name, and the id is
/// safe as a single path component (no `.`, `..`, `/`, `+`, `_`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// The longest id: 63 bytes of service name minus `sdci.Run+`.
    pub const MAX_LEN: usize = 54;
}

impl FromStr for JobId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        let fail = |why| {
            Err(ProtocolError::InvalidJobId {
                value: s.to_owned(),
                why,
            })
        };
        let Some(first) = s.bytes().next() else {
            return fail("empty");
        };
        if s.len() > Self::MAX_LEN {
            return fail("longer than 54 bytes");
        }
        if first == b'-' {
            return fail("starts with '-'");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("only lowercase a-z, 0-9 and '-' are allowed");
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(JobId);

/// A git commit id: 40 lowercase hex digits (SHA-1) or 64 (SHA-256 repositories).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitSha(String);

impl CommitSha {
    /// The first seven digits, as GitHub shows them.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl FromStr for CommitSha {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        let hex = s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if (s.len() == 40 || s.len() == 64) && hex {
            Ok(Self(s.to_owned()))
        } else {
            Err(ProtocolError::InvalidSha {
                value: s.to_owned(),
            })
        }
    }
}
string_newtype!(CommitSha);

/// A GitHub repository, `owner/name`.
///
/// Owner: 1–39 ASCII letters, digits or single inner hyphens (GitHub's user/org rule). Name:
/// 1–100 ASCII letters, digits, `-`, `_`, `.`, and never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn owner(&self) -> &str {
        self.0.split_once('/').map_or("", |(o, _)| o)
    }
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, n)| n)
    }
}

impl FromStr for RepoName {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        let fail = |why| {
            Err(ProtocolError::InvalidRepo {
                value: s.to_owned(),
                why,
            })
        };
        let Some((owner, name)) = s.split_once('/') else {
            return fail("expected owner/name");
        };
        if owner.is_empty() || owner.len() > 39 {
            return fail("owner must be 1-39 characters");
        }
        if !owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || owner.starts_with('-')
            || owner.ends_with('-')
            || owner.contains("--")
        {
            return fail("owner may hold letters, digits and single inner hyphens only");
        }
        if name.is_empty() || name.len() > 100 {
            return fail("name must be 1-100 characters");
        }
        if name == "." || name == ".." {
            return fail("name may not be '.' or '..'");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return fail("name may hold letters, digits, '-', '_' and '.' only");
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(RepoName);

#[cfg(test)]
mod tests {
    use super::*;

    fn job_id(s: &str) -> Result<JobId, ProtocolError> {
        s.parse()
    }

    #[test]
    fn job_id_accepts_lowercase_digits_and_inner_hyphens() {
        for ok in ["a", "0", "job-42", "7f3c9a1e-0b2d", "a-", &"a".repeat(54)] {
            assert!(job_id(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn job_id_rejects_every_rule_breaker() {
        let long = "a".repeat(55);
        for bad in [
            "", ".", "..", "a.b", "a+b", "a_b", "Job", "ABC", "-a", "a/b", "a b", "é", "a\n",
            "a\0", &long,
        ] {
            assert!(job_id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn job_id_service_name_fits_qrexec_limit() {
        let id = job_id(&"z".repeat(JobId::MAX_LEN)).unwrap();
        assert_eq!(format!("sdci.Run+{id}").len(), 63);
    }

    #[test]
    fn job_id_deserialization_validates() {
        assert!(serde_json::from_str::<JobId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
    }

    #[test]
    fn commit_sha_accepts_sha1_and_sha256_lowercase_hex() {
        assert!("0123456789abcdef0123456789abcdef01234567"
            .parse::<CommitSha>()
            .is_ok());
        assert!("a".repeat(64).parse::<CommitSha>().is_ok());
    }

    #[test]
    fn commit_sha_rejects_wrong_length_case_or_digits() {
        for bad in [
            "",
            "abc",
            &"a".repeat(39),
            &"a".repeat(41),
            &"a".repeat(63),
            &"A".repeat(40),
            &"g".repeat(40),
        ] {
            assert!(bad.parse::<CommitSha>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_sha_short_is_seven_digits() {
        let sha: CommitSha = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        assert_eq!(sha.short(), "0123456");
    }

    #[test]
    fn repo_name_accepts_github_names() {
        for ok in [
            "freedomofpress/securedrop-workstation",
            "a/b",
            "Org-1/repo.name_x",
            "o/.github",
        ] {
            let r: RepoName = ok.parse().unwrap();
            assert_eq!(r.as_str(), ok);
        }
        let r: RepoName = "owner/name".parse().unwrap();
        assert_eq!((r.owner(), r.name()), ("owner", "name"));
    }

    #[test]
    fn repo_name_rejects_malformed_names() {
        for bad in [
            "",
            "noslash",
            "/name",
            "owner/",
            "a/b/c",
            "-o/n",
            "o-/n",
            "o--o/n",
            "o/..",
            "o/.",
            "o/na me",
            "o_o/n",
            &format!("{}/n", "o".repeat(40)),
            &format!("o/{}", "n".repeat(101)),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
    }
}
