//! rustls configurations for the server, mTLS clients, and CA-pinning clients.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::TlsError;
use crate::ca::fingerprint_der;

/// The crypto provider every edgefleet TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Parse {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            what,
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Parse {
        what,
        reason: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "CA certificate")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The server's TLS configuration. `chain_pem` is the server certificate followed by the CA
/// certificate (the CA is sent so that pinning clients can find it). Client certificates
/// are optional (operators authenticate with tokens) and, when presented, must chain to the
/// CA; which node a certificate belongs to, and whether it is revoked, the server decides
/// per request.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(chain_pem, "server certificate")?,
            key(key_pem, "server private key")?,
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A client that trusts only `ca_pem`, presenting `identity` when given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(
            certs(&id.cert_pem, "client certificate")?,
            key(&id.key_pem, "client private key")?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client that accepts a server only if the certificate chain it presents contains a CA
/// certificate with SHA-256 fingerprint `ca_sha256`, and the server certificate verifies
/// against that CA (name included). Used to fetch the CA before enrollment or login.
pub fn pinned_client_config(ca_sha256: &str) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedCaVerifier {
        fingerprint: ca_sha256.to_ascii_lowercase(),
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_der(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate authority does not match the pinned fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, NodeKey, cert_info};
    use std::time::Duration;

    #[test]
    fn ca_issues_and_configs_build() {
        let now = time::OffsetDateTime::now_utc();
        let (ca, issued) = Ca::generate("test CA", now).unwrap();
        let server = ca
            .issue_server(
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = format!("{}{}", server.cert_pem, issued.cert_pem);
        server_config(&chain, &server.key_pem, ca.cert_pem()).unwrap();

        let node_key = NodeKey::generate().unwrap();
        let csr = node_key.csr_pem("evil-name").unwrap();
        let (cert_pem, info) = ca
            .sign_node_csr(&csr, "node-a", now, Duration::from_secs(7 * 86400))
            .unwrap();
        // The CA, not the CSR, names the node.
        assert_eq!(info.common_name, "node-a");
        assert_eq!(cert_info(&cert_pem).unwrap(), info);
        assert!(info.not_after - now > time::Duration::days(6));
        let identity = ClientIdentity {
            cert_pem,
            key_pem: node_key.to_pem(),
        };
        client_config(ca.cert_pem(), Some(&identity)).unwrap();
        pinned_client_config(&ca.fingerprint().unwrap()).unwrap();
        // Reloading the CA from PEM gives the same fingerprint.
        let again = Ca::load(&issued.cert_pem, &issued.key_pem).unwrap();
        assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(cert_info("nope").is_err());
        assert!(Ca::load("x", "y").is_err());
        let now = time::OffsetDateTime::now_utc();
        let (ca, _) = Ca::generate("test CA", now).unwrap();
        assert!(
            ca.sign_node_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "n",
                now,
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(NodeKey::from_pem("garbage").is_err());
    }
}
