//! The built-in certificate authority and node keys.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::TlsError;

/// How long before `now` a new certificate's validity starts, to absorb small clock skew
/// between the server and its nodes: five minutes, or a tenth of the lifetime for very
/// short-lived certificates, so renewal at two thirds of the lifetime stays meaningful.
fn backdate(validity: Duration) -> time::Duration {
    to_time(validity / 10).min(time::Duration::minutes(5))
}

fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Generate { what, source }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, non-zero leading byte: a DER INTEGER that keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The server's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA valid for ten years from `now`.
    pub fn generate(
        common_name: &str,
        now: OffsetDateTime,
    ) -> Result<(Self, IssuedCert), TlsError> {
        let key = KeyPair::generate().map_err(generate("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "edgefleet");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(generate("CA certificate"))?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = Self::load(&issued.cert_pem, &issued.key_pem)?;
        Ok((ca, issued))
    }

    /// Loads a CA from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Parse {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| TlsError::Parse {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Lower-case hex SHA-256 of the CA certificate's DER: what join strings carry.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        fingerprint_pem(&self.cert_pem)
    }

    /// Issues the server's TLS certificate for these DNS names and IP addresses.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate().map_err(generate("server key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edgefleet server");
        params.distinguished_name = dn;
        params.subject_alt_names = dns_names
            .iter()
            .filter_map(|n| n.clone().try_into().ok().map(SanType::DnsName))
            .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - backdate(validity);
        params.not_after = now + to_time(validity);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate("server certificate"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject (CN = node name),
    /// usages and validity are the CA's choice.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_name: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(String, CertInfo), TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        dn.push(DnType::OrganizationalUnitName, "edgefleet node");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - backdate(validity);
        params.not_after = now + to_time(validity);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(generate("node certificate"))?;
        let pem = cert.pem();
        let info = cert_info(&pem)?;
        Ok((pem, info))
    }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::days(36500))
}

/// A node's key pair. Generated on the node; only CSRs leave it.
pub struct NodeKey {
    key: KeyPair,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, TlsError> {
        Ok(Self {
            key: KeyPair::generate().map_err(generate("node key"))?,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            key: KeyPair::from_pem(pem).map_err(|e| TlsError::Parse {
                what: "node private key",
                reason: e.to_string(),
            })?,
        })
    }

    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR for `node_name`, signed by this key.
    pub fn csr_pem(&self, node_name: &str) -> Result<String, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(generate("certificate signing request"))?;
        csr.pem()
            .map_err(generate("certificate signing request PEM"))
    }
}

/// What the shells need to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    /// Lower-case hex of the serial number's bytes.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

fn first_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Parse {
        what,
        reason: e.to_string(),
    })
}

/// Parses the first certificate of a PEM string.
pub fn cert_info(pem: &str) -> Result<CertInfo, TlsError> {
    let der = first_der(pem, "certificate")?;
    cert_info_der(&der)
}

/// Parses a DER certificate (as presented in a TLS handshake).
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, TlsError> {
    let parse_err = |reason: String| TlsError::Parse {
        what: "certificate",
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let validity = cert.validity();
    Ok(CertInfo {
        common_name,
        serial: hex::encode(cert.raw_serial()),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// Lower-case hex SHA-256 of the DER of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    let der = first_der(pem, "certificate")?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

pub(crate) fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}
