//! The cluster root CA and the certificates it issues.
//!
//! The root is a self-signed ECDSA P-256 certificate, CN "Bulwark Root CA" (generation N > 1 of a
//! rotated CA: "Bulwark Root CA N", so every generation has its own subject), O = the cluster id
//! as 16 lowercase hex digits, valid ten years, basic constraints CA without a path length limit
//! (so a successor root can be cross-signed by this one), key usages keyCertSign and cRLSign.
//! Issued certificates carry the same O, a random 126-bit serial, keyUsage digitalSignature, an
//! authority key identifier, and are valid from one hour ago (clock skew between members) until
//! `ttl` from now.
//!
//! Rotation ([`ClusterCa::successor`]): a new root with a new key, plus the same root
//! cross-signed by the old one. While both are in use, every certificate the new root issues is
//! handed out followed by the cross-signed copy, so a peer that still trusts only the old root
//! verifies it through that copy, and one that trusts the new root verifies it directly.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;

use super::pem::{certs_from_pem, der_to_pem, first_cert_der, parse_x509};
use super::{CertifiedKey, PkiError, CLIENT_OU, MEMBER_OU};

const CA_COMMON_NAME: &str = "Bulwark Root CA";
/// Ten years of 365.25 days, rounded up.
const CA_VALIDITY: time::Duration = time::Duration::days(3653);
/// How far in the past issued certificates start, so a member whose clock is behind the issuer's
/// accepts them at once.
pub const CLOCK_SKEW: time::Duration = time::Duration::hours(1);
/// Names every member certificate carries, so local tools can always reach a member.
const ALWAYS_LOCAL: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The cluster root CA (ECDSA P-256) with its private key, able to issue member and client
/// certificates.
pub struct ClusterCa {
    cluster_id: u64,
    /// This root alone.
    cert_pem: String,
    key_pem: String,
    /// Certificates handed out after every leaf this CA issues: the cross-signed copy of this
    /// root while a rotation is in progress, else nothing.
    chain_pem: String,
    common_name: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A rotation's new root, from [`ClusterCa::successor`].
pub struct Successor {
    /// The new root, with its cross-signed copy as the chain of what it issues.
    pub ca: ClusterCa,
    /// The new root's certificate signed by the old root (same subject and key as the new root).
    pub cross_pem: String,
}

impl fmt::Debug for ClusterCa {
    /// Names the cluster, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &cluster_id_hex(self.cluster_id))
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new root CA for cluster `cluster_id`, with a fresh key.
    pub fn generate(cluster_id: u64) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let params = root_params(CA_COMMON_NAME, cluster_id, now + CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        // Load through `from_pem` so a fresh CA and a reloaded one sign identically.
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA: `key_pem` and, among the certificates in `certs_pem` (one root, or a trust
    /// bundle holding several), the one whose public key it is. Refuses a certificate that is
    /// not a CA, whose O is not a cluster id, or a key that matches none of them.
    pub fn from_pem(certs_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let ders = certs_from_pem(certs_pem)?;
        let der = ders
            .iter()
            .find(|der| {
                parse_x509(der).is_ok_and(|cert| {
                    cert.public_key().raw == key.subject_public_key_info().as_slice()
                })
            })
            .ok_or(PkiError::KeyMismatch)?;
        let cert = parse_x509(der)?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa);
        }
        let organization = cert
            .subject()
            .iter_organization()
            .next()
            .map(|o| o.as_str())
            .transpose()?
            .unwrap_or_default();
        let cluster_id = parse_cluster_id(organization)?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str())
            .transpose()?
            .unwrap_or_default()
            .to_string();
        let issuer = Issuer::from_ca_cert_der(der, key)?;
        Ok(ClusterCa {
            cluster_id,
            cert_pem: der_to_pem(der),
            key_pem: key_pem.to_string(),
            chain_pem: String::new(),
            common_name,
            issuer,
        })
    }

    /// This CA handing out `chain_pem` (PEM certificates, possibly none) after every leaf.
    pub fn with_chain(mut self, chain_pem: &str) -> Self {
        self.chain_pem = chain_pem.to_string();
        self
    }

    /// A successor root for a rotation to `generation` (2, 3, ...): a new key, a self-signed
    /// root "Bulwark Root CA <generation>" of the same cluster, and that root cross-signed by
    /// this one, valid no longer than this root.
    pub fn successor(&self, generation: u32) -> Result<Successor, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let common_name = format!("{CA_COMMON_NAME} {generation}");
        let now = OffsetDateTime::now_utc();
        let root =
            root_params(&common_name, self.cluster_id, now + CA_VALIDITY).self_signed(&key)?;
        let old_not_after = parse_x509(&first_cert_der(&self.cert_pem)?)?
            .validity()
            .not_after
            .to_datetime();
        let mut cross = root_params(
            &common_name,
            self.cluster_id,
            (now + CA_VALIDITY).min(old_not_after),
        );
        cross.use_authority_key_identifier_extension = true;
        let cross_pem = cross.signed_by(&key, &self.issuer)?.pem();
        let ca = Self::from_pem(&root.pem(), &key.serialize_pem())?.with_chain(&cross_pem);
        Ok(Successor { ca, cross_pem })
    }

    /// The root's CN, which names its generation.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// This root's generation, from its CN: 1 for "Bulwark Root CA", N for "Bulwark Root CA N"
    /// (a root of another name counts as 1).
    pub fn generation(&self) -> u32 {
        self.common_name
            .strip_prefix(CA_COMMON_NAME)
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(1)
    }

    /// What follows every leaf this CA issues (see [`ClusterCa::with_chain`]).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This root's certificate alone.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key: in every member's data directory (0600), sent only to a joining
    /// member over the pinned join exchange, and sealed under the old key in a rotation.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A member certificate: CN = member name, OU = [`MEMBER_OU`], EKU serverAuth + clientAuth
    /// (members are both ends of peer traffic). SANs: every entry of `hosts` (an IP address when
    /// it parses as one, else a DNS name; empty entries skipped) plus always "localhost",
    /// 127.0.0.1 and ::1, deduplicated.
    pub fn issue_member(
        &self,
        name: &str,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = self.leaf_params(name, MEMBER_OU, ttl)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = member_sans(hosts)?;
        self.sign_with_new_key(&params)
    }

    /// A client identity: CN = user name (etcd's client-cert-auth convention), OU =
    /// [`CLIENT_OU`], EKU clientAuth only, so it can never serve as a member.
    pub fn issue_client(&self, name: &str, ttl: Duration) -> Result<CertifiedKey, PkiError> {
        let mut params = self.leaf_params(name, CLIENT_OU, ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_with_new_key(&params)
    }

    /// Signs a joining member's certificate for the public key in `csr_pem`. Only the key is
    /// taken from the request: subject, usages and SANs are the CA's choice, as
    /// [`ClusterCa::issue_member`] sets them. The joiner's private key never travels.
    pub fn sign_member_csr(
        &self,
        csr_pem: &str,
        name: &str,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = self.leaf_params(name, MEMBER_OU, ttl)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = member_sans(hosts)?;
        Ok(self.with_chain_appended(params.signed_by(&request.public_key, &self.issuer)?.pem()))
    }

    /// Signs a client identity for the public key in `csr_pem`: CN = `name`, OU =
    /// [`CLIENT_OU`], EKU clientAuth, as [`ClusterCa::issue_client`]; only the key is taken from
    /// the request. The private key stays with whoever made the request.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = self.leaf_params(name, CLIENT_OU, ttl)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(self.with_chain_appended(params.signed_by(&request.public_key, &self.issuer)?.pem()))
    }

    /// A leaf as it is handed out: followed by this CA's chain, if it has one.
    fn with_chain_appended(&self, mut leaf_pem: String) -> String {
        if !self.chain_pem.is_empty() {
            if !leaf_pem.ends_with('\n') {
                leaf_pem.push('\n');
            }
            leaf_pem.push_str(&self.chain_pem);
        }
        leaf_pem
    }

    /// Parameters shared by every end-entity certificate; the caller adds EKUs and SANs.
    fn leaf_params(
        &self,
        name: &str,
        unit: &str,
        ttl: Duration,
    ) -> Result<CertificateParams, PkiError> {
        if name.is_empty() {
            return Err(PkiError::EmptyName);
        }
        let now = OffsetDateTime::now_utc();
        let not_after = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or(PkiError::TtlOutOfRange(ttl))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name, Some(unit), self.cluster_id);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = not_after;
        Ok(params)
    }

    /// Generates a P-256 key here and signs `params` for it. When members join with a CSR, the
    /// same `params` are signed for the CSR's public key instead.
    fn sign_with_new_key(&self, params: &CertificateParams) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: self.with_chain_appended(cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A root's parameters: CA without a path length limit, keyCertSign and cRLSign, valid from
/// [`CLOCK_SKEW`] ago until `not_after`.
fn root_params(common_name: &str, cluster_id: u64, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, None, cluster_id);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params.not_before = OffsetDateTime::now_utc() - CLOCK_SKEW;
    params.not_after = not_after;
    params
}

fn distinguished_name(common_name: &str, unit: Option<&str>, cluster_id: u64) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::OrganizationName, cluster_id_hex(cluster_id));
    dn
}

fn cluster_id_hex(cluster_id: u64) -> String {
    format!("{cluster_id:016x}")
}

fn parse_cluster_id(organization: &str) -> Result<u64, PkiError> {
    let bad = || PkiError::BadClusterId(organization.to_string());
    if organization.len() != 16 || !organization.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(organization, 16).map_err(|_| bad())
}

/// 16 random bytes with the top bit clear (a positive INTEGER) and the next bit set (so the
/// encoding is always 16 bytes): 126 random bits, above the 64 the CA/B forum asks for.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The SANs of a member certificate: `hosts` then the local names, each once.
fn member_sans(hosts: &[String]) -> Result<Vec<SanType>, PkiError> {
    let mut sans = Vec::new();
    let hosts = hosts.iter().map(String::as_str).filter(|h| !h.is_empty());
    for host in hosts.chain(ALWAYS_LOCAL) {
        let san = match ServerName::try_from(host) {
            Ok(ServerName::IpAddress(ip)) => SanType::IpAddress(IpAddr::from(ip)),
            Ok(ServerName::DnsName(dns)) => {
                SanType::DnsName(dns.as_ref().to_ascii_lowercase().try_into()?)
            }
            _ => return Err(PkiError::InvalidHost(host.to_string())),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A certificate signing request for a member or client named `name`, with a fresh P-256 key
/// that the caller keeps: returns (CSR PEM, private key PEM). The CA decides the subject's role.
pub fn certificate_request(name: &str) -> Result<(String, String), PkiError> {
    if name.is_empty() {
        return Err(PkiError::EmptyName);
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn a_signed_csr_keeps_the_joiners_key_and_the_cas_subject() {
        let ca = ClusterCa::generate(7).unwrap();
        let (csr, key) = certificate_request("m2").unwrap();
        let cert = ca
            .sign_member_csr(&csr, "m2", &["10.1.2.3".to_string()], DAY)
            .unwrap();
        let identity = crate::pki::identity_of(&first_cert_der(&cert).unwrap()).unwrap();
        assert_eq!(identity.common_name, "m2");
        assert_eq!(identity.role, crate::pki::Role::Member);
        // The certificate works with the key that never left the joiner.
        let pair = CertifiedKey {
            cert_pem: cert,
            key_pem: key,
        };
        crate::pki::server_tls_config(
            &crate::pki::LiveTrust::new(ca.cert_pem()).unwrap(),
            &crate::pki::LiveIdentity::new(&pair).unwrap(),
        )
        .unwrap();
        assert!(ca.sign_member_csr("not a csr", "m2", &[], DAY).is_err());
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn root_has_the_documented_subject_and_extensions() {
        let ca = ClusterCa::generate(0xab).unwrap();
        let der = first_cert_der(ca.cert_pem()).unwrap();
        let cert = parse_x509(&der).unwrap();
        let subject = cert.subject();
        let cn = subject.iter_common_name().next().unwrap().as_str().unwrap();
        let o = subject
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!((cn, o), (CA_COMMON_NAME, "00000000000000ab"));
        assert!(cert.is_ca());
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity > time::Duration::days(3650) && validity < time::Duration::days(3654));
    }

    #[test]
    fn member_sans_parse_ips_and_names_add_local_names_and_deduplicate() {
        let hosts = [
            "db1.Example.com",
            "10.0.0.7",
            "",
            "localhost",
            "127.0.0.1",
            "::1",
        ];
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let sans = member_sans(&hosts).unwrap();
        let expected = vec![
            SanType::DnsName("db1.example.com".try_into().unwrap()),
            SanType::IpAddress("10.0.0.7".parse().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
        ];
        assert_eq!(sans, expected);
        assert!(matches!(
            member_sans(&["bad host".to_string()]),
            Err(PkiError::InvalidHost(_))
        ));
    }

    #[test]
    fn member_certificate_carries_its_names_and_both_usages() {
        let ca = ClusterCa::generate(7).unwrap();
        let member = ca
            .issue_member("m1", &["10.1.2.3".to_string()], 90 * DAY)
            .unwrap();
        let der = first_cert_der(&member.cert_pem).unwrap();
        let cert = parse_x509(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::IPAddress(&[10, 1, 2, 3])));
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        assert_eq!(cert.raw_serial().len(), 16);
        let not_before = cert.validity().not_before.to_datetime();
        let skew = OffsetDateTime::now_utc() - not_before;
        assert!(skew > time::Duration::minutes(59) && skew < time::Duration::minutes(61));
    }

    #[test]
    fn client_certificate_is_client_auth_only() {
        let ca = ClusterCa::generate(7).unwrap();
        let client = ca.issue_client("alice", DAY).unwrap();
        let der = first_cert_der(&client.cert_pem).unwrap();
        let cert = parse_x509(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.subject_alternative_name().unwrap().is_none());
    }

    #[test]
    fn serials_differ_between_certificates() {
        let ca = ClusterCa::generate(7).unwrap();
        let a = ca.issue_client("alice", DAY).unwrap();
        let b = ca.issue_client("alice", DAY).unwrap();
        let serial = |pem: &str| {
            let der = first_cert_der(pem).unwrap();
            parse_x509(&der).unwrap().raw_serial().to_vec()
        };
        assert_ne!(serial(&a.cert_pem), serial(&b.cert_pem));
    }

    #[test]
    fn bad_names_and_lifetimes_are_refused() {
        let ca = ClusterCa::generate(7).unwrap();
        assert!(matches!(ca.issue_client("", DAY), Err(PkiError::EmptyName)));
        assert!(matches!(
            ca.issue_client("alice", Duration::MAX),
            Err(PkiError::TtlOutOfRange(_))
        ));
    }

    #[test]
    fn from_pem_round_trips() {
        let ca = ClusterCa::generate(0x0123_4567_89ab_cdef).unwrap();
        let loaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cluster_id(), 0x0123_4567_89ab_cdef);
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());
    }

    #[test]
    fn from_pem_rejects_a_key_that_does_not_match() {
        let ca = ClusterCa::generate(1).unwrap();
        let other = ClusterCa::generate(1).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
    }

    #[test]
    fn from_pem_rejects_a_leaf_certificate() {
        let ca = ClusterCa::generate(1).unwrap();
        let member = ca.issue_member("m1", &[], DAY).unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&member.cert_pem, &member.key_pem),
            Err(PkiError::NotACa)
        ));
    }

    #[test]
    fn cluster_ids_are_exactly_16_hex_digits() {
        assert_eq!(parse_cluster_id("00000000000000ff").unwrap(), 255);
        for bad in [
            "",
            "ff",
            "+00000000000000f",
            "00000000000000fg",
            "000000000000000ff",
        ] {
            assert!(parse_cluster_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let ca = ClusterCa::generate(1).unwrap();
        let client = ca.issue_client("alice", DAY).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));
    }
}
