//! Sealing a secret under a CA's private key: how a rotation hands the new CA key to every
//! member through the replicated log without the log, a snapshot of it, or a backup ever holding
//! it in the clear. Only a holder of the old CA key (every member) can open it.
//!
//! The AEAD key is HKDF-SHA256 of the CA key's PKCS#8 DER (salt: the cluster id, info: a
//! version label); the cipher is ChaCha20-Poly1305 with a random 96-bit nonce, and `context`
//! (e.g. the new root's certificate) is authenticated with it, so a sealed key cannot be
//! replayed with another certificate. Sealed text: base64 of nonce || ciphertext.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rcgen::KeyPair;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{ClusterCa, PkiError};

const INFO: &[u8] = b"bulwark ca rotation seal v1";
const NONCE_LEN: usize = 12;

fn cipher(ca: &ClusterCa) -> Result<ChaCha20Poly1305, PkiError> {
    let key_der = Zeroizing::new(KeyPair::from_pem(ca.key_pem())?.serialize_der());
    let hkdf = Hkdf::<Sha256>::new(Some(&ca.cluster_id().to_be_bytes()), &key_der);
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(ChaCha20Poly1305::new(Key::from_slice(key.as_ref())))
}

/// `secret` sealed under `ca`'s key, bound to `context`.
pub fn seal(ca: &ClusterCa, secret: &[u8], context: &[u8]) -> Result<String, PkiError> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher(ca)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        .map_err(|_| PkiError::Sealed)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// Opens what [`seal`] sealed; fails on another CA's key, another context, or damaged text.
pub fn unseal(
    ca: &ClusterCa,
    sealed: &str,
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim())
        .map_err(|_| PkiError::Sealed)?;
    if bytes.len() < NONCE_LEN {
        return Err(PkiError::Sealed);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    cipher(ca)?
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: context,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PkiError::Sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_key_and_context_open_a_seal() {
        let ca = ClusterCa::generate(5).unwrap();
        let sealed = seal(&ca, b"the new key", b"root").unwrap();
        assert_eq!(
            unseal(&ca, &sealed, b"root").unwrap().as_slice(),
            b"the new key"
        );
        assert!(!sealed.contains("the new key"));
        let other = ClusterCa::generate(5).unwrap();
        assert!(matches!(
            unseal(&other, &sealed, b"root"),
            Err(PkiError::Sealed)
        ));
        assert!(matches!(
            unseal(&ca, &sealed, b"other root"),
            Err(PkiError::Sealed)
        ));
        assert!(matches!(
            unseal(&ca, "AAAA", b"root"),
            Err(PkiError::Sealed)
        ));
        assert!(matches!(
            unseal(&ca, "not base64!", b"root"),
            Err(PkiError::Sealed)
        ));
        // A fresh nonce each time.
        assert_ne!(sealed, seal(&ca, b"the new key", b"root").unwrap());
    }
}
