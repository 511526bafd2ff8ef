//! Who a verified peer certificate names. This reads; it does not verify: call it only on a
//! certificate the TLS layer has already chained to the cluster CA.

use std::time::SystemTime;

use super::pem::parse_x509;
use super::{PkiError, CLIENT_OU, MEMBER_OU};

/// What a certificate allows its holder to be, from its subject OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// OU = [`MEMBER_OU`]: a cluster member.
    Member,
    /// OU = [`CLIENT_OU`]: a client identity; its CN is the user name.
    Client,
    /// Any other OU, none, or more than one: no role.
    Unknown,
}

/// The identity a peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The member name or user name.
    pub common_name: String,
    pub role: Role,
    /// The serial number in lowercase hex, without separators (the key of the deny list).
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The CN of the root that signed it, which names that root's generation ("Bulwark Root
    /// CA", "Bulwark Root CA 2", ...): whether a holder has moved to a rotated root.
    pub issuer: String,
}

/// Reads who a verified peer certificate (DER) names. A subject without exactly one CN is
/// refused rather than guessed at.
pub fn identity_of(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let cert = parse_x509(cert_der)?;
    let subject = cert.subject();
    let names = subject
        .iter_common_name()
        .map(|cn| cn.as_str())
        .collect::<Result<Vec<_>, _>>()?;
    let [common_name] = names[..] else {
        return Err(PkiError::CommonNameCount(names.len()));
    };
    let units = subject
        .iter_organizational_unit()
        .map(|ou| ou.as_str())
        .collect::<Result<Vec<_>, _>>()?;
    let role = match units[..] {
        [MEMBER_OU] => Role::Member,
        [CLIENT_OU] => Role::Client,
        _ => Role::Unknown,
    };
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(PeerIdentity {
        common_name: common_name.to_string(),
        role,
        serial_hex: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before: cert.validity().not_before.to_datetime().into(),
        not_after: cert.validity().not_after.to_datetime().into(),
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;
    use crate::pki::{first_cert_der, ClusterCa};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn reads_member_and_client_identities() {
        let ca = ClusterCa::generate(3).unwrap();
        let member = ca.issue_member("m1", &[], 90 * DAY).unwrap();
        let client = ca.issue_client("alice", DAY).unwrap();

        let m = identity_of(&first_cert_der(&member.cert_pem).unwrap()).unwrap();
        assert_eq!((m.common_name.as_str(), m.role), ("m1", Role::Member));
        assert_eq!(m.serial_hex.len(), 32);
        let left = m.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left > 90 * DAY - Duration::from_secs(60) && left <= 90 * DAY);

        let c = identity_of(&first_cert_der(&client.cert_pem).unwrap()).unwrap();
        assert_eq!((c.common_name.as_str(), c.role), ("alice", Role::Client));
        assert_ne!(c.serial_hex, m.serial_hex);
    }

    #[test]
    fn the_ca_itself_has_no_role() {
        let ca = ClusterCa::generate(3).unwrap();
        let root = identity_of(&first_cert_der(ca.cert_pem()).unwrap()).unwrap();
        assert_eq!(root.role, Role::Unknown);
    }

    /// rcgen keeps one value per attribute type, so a second CN or OU is written under its OID
    /// as a custom type, which x509-parser reads as the same attribute.
    #[test]
    fn ambiguous_subjects_are_refused_or_roleless() {
        const CN_OID: [u64; 4] = [2, 5, 4, 3];
        const OU_OID: [u64; 4] = [2, 5, 4, 11];
        let key = KeyPair::generate().unwrap();
        let self_signed = |entries: &[(DnType, &str)]| {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            for (ty, value) in entries {
                params.distinguished_name.push(ty.clone(), *value);
            }
            params.self_signed(&key).unwrap()
        };

        let two_units = self_signed(&[
            (DnType::CommonName, "a"),
            (DnType::OrganizationalUnitName, MEMBER_OU),
            (DnType::CustomDnType(OU_OID.to_vec()), CLIENT_OU),
        ]);
        assert_eq!(identity_of(two_units.der()).unwrap().role, Role::Unknown);

        let two_names = self_signed(&[
            (DnType::CommonName, "alice"),
            (DnType::CustomDnType(CN_OID.to_vec()), "root"),
            (DnType::OrganizationalUnitName, CLIENT_OU),
        ]);
        assert!(matches!(
            identity_of(two_names.der()),
            Err(PkiError::CommonNameCount(2))
        ));

        let no_name = self_signed(&[(DnType::OrganizationalUnitName, CLIENT_OU)]);
        assert!(matches!(
            identity_of(no_name.der()),
            Err(PkiError::CommonNameCount(0))
        ));
        assert!(identity_of(b"not a certificate").is_err());
    }
}
