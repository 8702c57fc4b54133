//! edgefleet's PKI and TLS configuration.
//!
//! - `Ca`: the server's built-in certificate authority: creates itself, issues the server
//!   certificate, signs node CSRs with short lifetimes. The subject of a node certificate is
//!   chosen by the CA (CN = node name), never taken from the CSR.
//! - `NodeKey`: a node's private key and CSR; the key never leaves the node.
//! - `CertInfo`: what the shells need to know about a certificate (CN, serial, validity).
//! - rustls configurations: the server's (client certificates optional, verified against
//!   the CA when present), the mTLS client's, and the CA-pinning client used before a node
//!   or operator has the CA (it accepts a server only if its chain contains the CA whose
//!   SHA-256 fingerprint it was given, and then verifies the chain against it).
//!
//! Everything uses the `ring` provider explicitly; no process-wide default is installed.

#![forbid(unsafe_code)]

mod ca;
mod config;

pub use ca::{Ca, CertInfo, IssuedCert, NodeKey, cert_info, cert_info_der, fingerprint_pem};
pub use config::{ClientIdentity, client_config, pinned_client_config, provider, server_config};

/// Errors of the PKI and TLS configuration. Messages name the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not valid PEM or DER: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("certificate signing request is invalid: {0}")]
    Csr(String),
    #[error("building TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("building certificate verifier: {0}")]
    Verifier(String),
}
