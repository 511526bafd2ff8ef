//! Join tokens, swarm-style: `BWTKN-1-<sha256 of the CA certificate, hex>-<secret>`.
//!
//! The digest lets a joining node pin the CA it fetches over an unauthenticated connection; the
//! secret proves to the cluster that the joiner was given the token. Tokens are per role.

use std::fmt;

use sha2::{Digest, Sha256};

use super::pem::{certs_from_pem, der_to_pem, first_cert_der};
use super::PkiError;

const PREFIX: &str = "BWTKN-1-";
const SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA certificate's DER, lowercase hex.
    pub ca_digest: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    /// Shows the pinned CA, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl JoinToken {
    /// A new token for the CA in `ca_cert_pem`, with a fresh random secret.
    pub fn generate(ca_cert_pem: &str) -> Result<Self, PkiError> {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let secret = (0..SECRET_LEN)
            .map(|_| SECRET_ALPHABET[rng.gen_range(0..SECRET_ALPHABET.len())] as char)
            .collect();
        Ok(JoinToken {
            ca_digest: ca_digest(ca_cert_pem)?,
            secret,
        })
    }

    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let bad = || PkiError::BadToken;
        let rest = text.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (digest, secret) = rest.split_once('-').ok_or_else(bad)?;
        let hex_digest = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_digest || secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }

    /// Whether the roots in `roots_pem` include the one this token pins.
    pub fn pins(&self, roots_pem: &str) -> bool {
        self.pinned_root(roots_pem).is_some()
    }

    /// The root this token pins, picked out of `roots_pem` (PEM), if it is there.
    pub fn pinned_root(&self, roots_pem: &str) -> Option<String> {
        certs_from_pem(roots_pem)
            .ok()?
            .into_iter()
            .find(|der| der_digest(der) == self.ca_digest)
            .map(|der| der_to_pem(&der))
    }

    /// Compares secrets in constant time, so timing reveals nothing about the right one.
    pub fn secret_matches(&self, presented: &str) -> bool {
        let expected = Sha256::digest(self.secret.as_bytes());
        let presented = Sha256::digest(presented.as_bytes());
        expected
            .iter()
            .zip(presented.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

/// sha256 of the first certificate's DER in `ca_cert_pem`, lowercase hex.
pub fn ca_digest(ca_cert_pem: &str) -> Result<String, PkiError> {
    Ok(der_digest(&first_cert_der(ca_cert_pem)?))
}

/// sha256 of a certificate's DER, lowercase hex (what a join token pins).
pub fn der_digest(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;

    #[test]
    fn tokens_round_trip_and_pin_their_ca() {
        let ca = ClusterCa::generate(1).unwrap();
        let other = ClusterCa::generate(2).unwrap();
        let token = JoinToken::generate(ca.cert_pem()).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("BWTKN-1-"));
        let parsed = JoinToken::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.pins(ca.cert_pem()));
        assert!(!parsed.pins(other.cert_pem()));
        let bundle = format!("{}{}", other.cert_pem(), ca.cert_pem());
        assert!(parsed.pins(&bundle));
        assert_eq!(parsed.pinned_root(&bundle).as_deref(), Some(ca.cert_pem()));
        assert_eq!(parsed.pinned_root(other.cert_pem()), None);
        assert!(token.secret_matches(&parsed.secret));
        assert!(!token.secret_matches("guess"));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for text in [
            "",
            "BWTKN-1-",
            "BWTKN-2-00-abc",
            "BWTKN-1-abcd-secret",
            &format!("BWTKN-1-{}-", "a".repeat(64)),
            &format!("BWTKN-1-{}-bad secret", "a".repeat(64)),
        ] {
            assert!(JoinToken::parse(text).is_err(), "{text:?}");
        }
    }
}
