//! Reading certificates and private keys out of PEM text: the one place PEM is decoded.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PkiError;

/// The first certificate in `pem` (the leaf of a chain), as DER.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or(PkiError::NoCertificate)
}

/// Every certificate in `pem`, in order; at least one.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(certs)
}

/// One certificate as PEM text (64-column base64, LF line ends, a final newline).
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The first private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub(super) fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    Ok(PrivateKeyDer::from_pem_slice(pem.as_bytes())?)
}

/// Parses one DER certificate, keeping only the error kind x509-parser reports.
pub(super) fn parse_x509(
    der: &[u8],
) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    use x509_parser::nom::Err;
    match x509_parser::parse_x509_certificate(der) {
        Ok((_rest, cert)) => Ok(cert),
        Err(Err::Error(e) | Err::Failure(e)) => Err(e.into()),
        Err(Err::Incomplete(_)) => Err(x509_parser::error::X509Error::InvalidCertificate.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_is_refused() {
        assert!(matches!(
            first_cert_der("no pem here"),
            Err(PkiError::NoCertificate)
        ));
        assert!(key_from_pem("no pem here").is_err());
    }

    #[test]
    fn der_to_pem_round_trips() {
        let ca = crate::pki::ClusterCa::generate(1).unwrap();
        let der = first_cert_der(ca.cert_pem()).unwrap();
        assert_eq!(first_cert_der(&der_to_pem(&der)).unwrap(), der);
    }
}
