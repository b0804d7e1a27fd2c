//! TLS trust for the SOAP endpoint and the guestFile transfers: one rustls configuration built
//! from [`TlsPolicy`], shared by every request of a client.
//!
//! Invariants:
//! - Handshake signatures are always verified with the provider's algorithms; only *which
//!   certificate* is trusted changes with the policy.
//! - A pinned fingerprint is the SHA-256 of the server's end-entity certificate (DER), compared
//!   exactly; a malformed fingerprint in the configuration is an error at start-up, not a silent
//!   "trust nothing".
//! - Nothing is accepted blindly unless the policy is `InsecureAcceptAnyCertificate`.

use crate::config::TlsPolicy;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Why a TLS policy could not be turned into a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError(pub String);

/// SHA-256 of a DER certificate, as 64 lowercase hex digits.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Normalizes a configured fingerprint (`AB:CD:…`, `abcd…`) to 64 lowercase hex digits.
pub fn normalize_fingerprint(s: &str) -> Result<String, TlsConfigError> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsConfigError(format!(
            "{s:?} is not a SHA-256 fingerprint (64 hex digits, `:` separators allowed); \
             get it with `openssl x509 -noout -fingerprint -sha256 -in cert.pem`"
        )));
    }
    Ok(hex)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
enum Trust {
    /// Fingerprints (normalized hex) of acceptable end-entity certificates.
    Pinned(Vec<String>),
    /// A chain to these roots, or one of `exact` presented as the server's certificate.
    Roots {
        webpki: Arc<WebPkiServerVerifier>,
        exact: Vec<Vec<u8>>,
    },
    Any,
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(pins) => {
                let fp = sha256_fingerprint(end_entity.as_ref());
                if pins.contains(&fp) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    tracing::warn!(fingerprint = %fp, "server certificate is not pinned");
                    Err(rustls::Error::General(format!(
                        "the server's certificate (SHA-256 {fp}) is not among the pinned fingerprints"
                    )))
                }
            }
            Trust::Roots { webpki, exact } => {
                match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        if exact.iter().any(|c| c.as_slice() == end_entity.as_ref()) {
                            Ok(ServerCertVerified::assertion())
                        } else {
                            Err(e)
                        }
                    }
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration for a policy; `None` for [`TlsPolicy::SystemRoots`], where
/// reqwest's own native-roots configuration is used.
pub fn client_config(policy: &TlsPolicy) -> Result<Option<rustls::ClientConfig>, TlsConfigError> {
    let provider = provider();
    let trust = match policy {
        TlsPolicy::SystemRoots => return Ok(None),
        TlsPolicy::InsecureAcceptAnyCertificate => {
            tracing::warn!("TLS certificate checking is OFF (insecure-accept-any-certificate)");
            Trust::Any
        }
        TlsPolicy::Pinned { sha256 } => {
            if sha256.is_empty() {
                return Err(TlsConfigError(
                    "tls mode \"pinned\" needs at least one sha256 fingerprint".into(),
                ));
            }
            Trust::Pinned(
                sha256
                    .iter()
                    .map(|s| normalize_fingerprint(s))
                    .collect::<Result<_, _>>()?,
            )
        }
        TlsPolicy::CaFile { ca_file } => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    TlsConfigError(format!(
                        "cannot read CA certificates from {}: {e}",
                        ca_file.display()
                    ))
                })?;
            if certs.is_empty() {
                return Err(TlsConfigError(format!(
                    "{} holds no PEM certificate",
                    ca_file.display()
                )));
            }
            let mut roots = RootCertStore::empty();
            for c in &certs {
                roots.add(c.clone()).map_err(|e| {
                    TlsConfigError(format!(
                        "a certificate in {} cannot be a trust anchor: {e}",
                        ca_file.display()
                    ))
                })?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        TlsConfigError(format!("cannot build the certificate verifier: {e}"))
                    })?;
            Trust::Roots {
                webpki,
                exact: certs.iter().map(|c| c.as_ref().to_vec()).collect(),
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(format!("TLS protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, provider }))
        .with_no_client_auth();
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized_from_any_common_spelling() {
        let colon = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&colon).unwrap(), "ab".repeat(32));
        assert_eq!(
            normalize_fingerprint(&"Ab".repeat(32)).unwrap(),
            "ab".repeat(32)
        );
        assert!(normalize_fingerprint("abcd").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn an_empty_pin_list_or_missing_ca_file_is_a_configuration_error() {
        assert!(client_config(&TlsPolicy::Pinned { sha256: vec![] }).is_err());
        let err = client_config(&TlsPolicy::CaFile {
            ca_file: "/nonexistent/ca.pem".into(),
        })
        .unwrap_err();
        assert!(err.0.contains("/nonexistent/ca.pem"), "{}", err.0);
    }
}
