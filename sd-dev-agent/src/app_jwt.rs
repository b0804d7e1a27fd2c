//! GitHub App JSON Web Tokens: RS256 over `{"iat","exp","iss"}` with the App's private key.
//!
//! Uses `ring` (already linked through rustls), not a JWT crate: the App JWT is one fixed
//! header and three claims. Invariants: `iat` is 60 s in the past (clock drift, as GitHub
//! advises) and `exp` 9 minutes ahead, so `exp - iat` = 10 minutes, GitHub's maximum; the key
//! and the JWT never reach a log or an error message.

use crate::error::{AgentError, Result};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use sdci_protocol::job::Secret;

/// A GitHub App's private key, parsed once.
pub struct AppKey {
    pair: RsaKeyPair,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(***)")
    }
}

impl AppKey {
    /// Parses a PEM key: `RSA PRIVATE KEY` (PKCS#1, what GitHub hands out) or `PRIVATE KEY`
    /// (PKCS#8, e.g. after `openssl pkcs8 -topk8`).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let bad = |why: &str| AgentError::Config(format!("GitHub App private key: {why}"));
        let label = pem
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or_else(|| bad("no PEM \"-----BEGIN ...-----\" line"))?;
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| bad("the PEM body is not base64"))?;
        let pair = match label {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            _ => {
                return Err(bad(&format!(
                    "expected an RSA private key, found {label:?}"
                )))
            }
        }
        .map_err(|e| bad(&format!("not a usable RSA key ({e})")))?;
        Ok(Self { pair })
    }

    /// A JWT for `app_id`, valid from `now - 60` to `now + 540` (Unix seconds).
    pub fn jwt(&self, app_id: u64, now: u64) -> Result<Secret> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": now.saturating_sub(60),
            "exp": now + 540,
            "iss": app_id,
        });
        let signing_input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| AgentError::Config("signing the GitHub App JWT failed".into()))?;
        Ok(Secret::new(format!("{signing_input}.{}", b64(&sig))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    #[test]
    fn jwt_verifies_with_the_public_key_and_carries_github_claims() {
        let key = AppKey::from_pem(sdci_tests::github::TEST_APP_PRIVATE_KEY).unwrap();
        let jwt = key.jwt(42, 1_000_000).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(claims["iss"], 42);
        assert_eq!(claims["iat"], 999_940);
        assert_eq!(claims["exp"], 1_000_540);
        let public = key.pair.public_key().as_ref().to_vec();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &dec(parts[2]),
            )
            .unwrap();
    }

    #[test]
    fn garbage_keys_are_refused_without_echoing_them() {
        let err = AppKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        assert!(AppKey::from_pem("not a key").is_err());
        assert!(AppKey::from_pem(
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----"
        )
        .is_err());
    }
}
