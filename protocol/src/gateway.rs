//! The gateway: `sdci-agent status|token|head|ci-config`, which `sdci-host` runs instead of
//! calling GitHub itself (CONTRACTS.md §5). Two things cross that process boundary besides the
//! command line and stdout's plain lines: the exit code ([`GatewayExit`], one table) and the
//! JSON line `token` prints ([`MintedToken`]).
//!
//! | exit | [`GatewayExit`]  | meaning                                                        |
//! |------|------------------|----------------------------------------------------------------|
//! | 0    | `Ok`             | done; the answer (if any) is on stdout                         |
//! | 2    | `Unreachable`    | GitHub unreachable / rate limited / failing: retry later       |
//! | 3    | `NoCiConfig`     | `ci-config`: the commit has no CI file or no `qubes` key       |
//! | 64   | `Usage`          | bad command-line input (sysexits' EX_USAGE)                    |
//! | 78   | `Config`         | configuration, credentials, or a request GitHub refused (EX_CONFIG) |
//!
//! Any other code (a signal, a crash) is to be treated like `Unreachable`: infrastructure.

use crate::secret::Secret;
use crate::ProtocolError;
use serde::{Deserialize, Serialize};

/// How a gateway subcommand ended (the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayExit {
    Ok,
    /// GitHub could not be reached or kept failing (the shared infrastructure code 2).
    Unreachable,
    /// `ci-config` only: `.github/workstation-ci.yml` or its `qubes` key is missing.
    NoCiConfig,
    /// The command line was wrong.
    Usage,
    /// The configuration or credentials are wrong, or GitHub refused the request (4xx).
    Config,
}

impl GatewayExit {
    /// Every code, in the table's order.
    pub const ALL: [Self; 5] = [
        Self::Ok,
        Self::Unreachable,
        Self::NoCiConfig,
        Self::Usage,
        Self::Config,
    ];

    /// The process exit code.
    pub const fn code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::Unreachable => 2,
            Self::NoCiConfig => 3,
            Self::Usage => 64,
            Self::Config => 78,
        }
    }

    /// The variant for a process exit code; `None` for a code outside the table (treat it as
    /// infrastructure, like [`GatewayExit::Unreachable`]).
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// What the code means, for messages.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unreachable => "GitHub unreachable",
            Self::NoCiConfig => "no CI configuration",
            Self::Usage => "usage error",
            Self::Config => "configuration error or request refused",
        }
    }
}

/// What `sdci-agent token` prints on stdout, one JSON line:
/// `{"expires_at":"2026-11-28T18:29:40Z","token":"ghs_…"}`. `expires_at` is GitHub's RFC 3339
/// string, passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintedToken {
    // Declared in this order so the line reads as it always has (keys sorted).
    pub expires_at: String,
    pub token: Secret,
}

impl MintedToken {
    pub fn to_json(&self) -> String {
        // Two string fields: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the line (surrounding whitespace allowed, e.g. `println!`'s newline).
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        serde_json::from_str(text.trim()).map_err(|e| ProtocolError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_exit_codes_are_the_documented_table() {
        let table: Vec<(GatewayExit, i32)> =
            GatewayExit::ALL.iter().map(|e| (*e, e.code())).collect();
        assert_eq!(
            table,
            [
                (GatewayExit::Ok, 0),
                (GatewayExit::Unreachable, 2),
                (GatewayExit::NoCiConfig, 3),
                (GatewayExit::Usage, 64),
                (GatewayExit::Config, 78),
            ]
        );
        for e in GatewayExit::ALL {
            assert_eq!(GatewayExit::from_code(e.code()), Some(e));
        }
    }

    #[test]
    fn codes_outside_the_table_are_not_gateway_exits() {
        for code in [-1, 1, 4, 65, 77, 126, 137] {
            assert_eq!(GatewayExit::from_code(code), None, "{code}");
        }
    }

    #[test]
    fn the_infrastructure_code_is_the_shared_error_outcome() {
        assert_eq!(
            GatewayExit::Unreachable.code(),
            crate::Outcome::Error.exit_code()
        );
    }

    #[test]
    fn a_minted_token_prints_as_one_line_with_sorted_keys() {
        let t = MintedToken {
            expires_at: "2026-11-28T18:29:40Z".into(),
            token: Secret::new("ghs_abc"),
        };
        let line = t.to_json();
        assert_eq!(
            line,
            r#"{"expires_at":"2026-11-28T18:29:40Z","token":"ghs_abc"}"#
        );
        assert_eq!(MintedToken::from_json(&format!("{line}\n")).unwrap(), t);
    }

    #[test]
    fn a_minted_token_line_must_have_both_fields_and_no_others() {
        assert!(MintedToken::from_json(r#"{"token":"ghs_abc"}"#).is_err());
        assert!(MintedToken::from_json(r#"{"token":"t","expires_at":"x","extra":1}"#).is_err());
        assert!(MintedToken::from_json("ghs_abc").is_err());
    }

    #[test]
    fn a_minted_token_never_shows_in_debug_output() {
        let t = MintedToken {
            expires_at: "x".into(),
            token: Secret::new("ghs_abc"),
        };
        assert!(!format!("{t:?}").contains("ghs_abc"));
    }
}
