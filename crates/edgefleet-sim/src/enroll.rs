//! Enrollment of simulated nodes, exactly as a real agent enrolls.
//!
//! With a join string, the server's CA is fetched over a connection that trusts nothing
//! but the CA whose fingerprint the join string carries, and its fingerprint is checked
//! again. Then each node generates its own key pair locally, sends a CSR with the token to
//! `POST /v1/enroll`, and gets its certificate. Only the rustls client configuration
//! built from key and certificate is kept (no PEM strings), to keep nodes small.
//!
//! Enrollment requests do not need a client certificate, so each enrollment worker keeps
//! one keep-alive connection for all the nodes it enrolls.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_core::backoff::Backoff;
use edgefleet_tls::{ClientIdentity, NodeKey, TlsError};
use edgefleet_wire::api::{CaInfo, EnrollRequest, EnrollResponse};
use edgefleet_wire::node::{CpuFacts, NodeFacts, OsFacts};
use edgefleet_wire::{Labels, Timestamp};

use crate::http::{CallError, Connection, Endpoint, Method, Request};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An enrollment is not repeatable (a second attempt for a name the first one enrolled is
/// refused), so its answer is awaited patiently: a busy server can take long.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(180);
/// Transient failures (connection refused, 5xx, timeouts) are retried this often per node.
const ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("fetching the server's CA from {url}: {source}")]
    FetchCa {
        url: String,
        #[source]
        source: CallError,
    },
    #[error(
        "the server at {url} sent a CA with fingerprint {received}, but the join string pins {pinned}; check that the join string belongs to this server"
    )]
    CaMismatch {
        url: String,
        received: String,
        pinned: String,
    },
    #[error("the CA certificate is unusable: {0}")]
    Ca(#[source] TlsError),
    #[error("enrolling node {node}: {source}")]
    Call {
        node: String,
        #[source]
        source: CallError,
    },
    #[error("enrolling node {node}: {source}")]
    Tls {
        node: String,
        #[source]
        source: TlsError,
    },
    #[error(
        "enrolling node {node}: an earlier attempt failed ({earlier}) after the server had \
         enrolled the node, so its certificate is lost; revoke it (`edgefleet node revoke {node}`) \
         or use another name prefix or first number"
    )]
    AnswerLost { node: String, earlier: String },
    #[error("enrolling node {node}: the server enrolled it as {answered:?}")]
    WrongName { node: String, answered: String },
}

/// What a node keeps from its enrollment.
#[derive(Debug)]
pub struct Enrolled {
    pub tls: Arc<rustls::ClientConfig>,
    pub certificate_not_after: Timestamp,
}

/// Fetches the CA over a connection pinned to `ca_sha256` and checks its fingerprint.
pub async fn fetch_pinned_ca(endpoint: &Endpoint, ca_sha256: &str) -> Result<String, EnrollError> {
    let url = format!("{}/v1/ca", endpoint.base_url);
    let fetch_error = |source| EnrollError::FetchCa {
        url: url.clone(),
        source,
    };
    let tls = edgefleet_tls::pinned_client_config(ca_sha256).map_err(EnrollError::Ca)?;
    let what = "fetching the CA";
    let mut attempt = 0;
    let ca: CaInfo = loop {
        let result = async {
            let mut connection = Connection::open(endpoint, Arc::new(tls.clone()), what).await?;
            connection
                .send(endpoint, Request::get("/v1/ca", REQUEST_TIMEOUT, what))
                .await?
                .check(what)?
                .json(what)
        }
        .await;
        match result {
            Ok(ca) => break ca,
            Err(error) if retryable(&error) && attempt + 1 < ATTEMPTS => {
                tracing::debug!(%error, attempt, "fetching the CA failed; retrying");
                tokio::time::sleep(retry_delay(attempt)).await;
                attempt += 1;
            }
            Err(error) => return Err(fetch_error(error)),
        }
    };
    let received = edgefleet_tls::fingerprint_pem(&ca.ca_pem).map_err(EnrollError::Ca)?;
    if received != ca_sha256.to_ascii_lowercase() {
        return Err(EnrollError::CaMismatch {
            url: endpoint.base_url.clone(),
            received,
            pinned: ca_sha256.to_owned(),
        });
    }
    Ok(ca.ca_pem)
}

/// Network trouble and server-side errors are worth another try; a handshake refused
/// because of the server's certificate and 4xx answers are not.
fn retryable(error: &CallError) -> bool {
    match error {
        CallError::Handshake { source, .. } => source.kind() != std::io::ErrorKind::InvalidData,
        other => !other.is_permanent(),
    }
}

fn retry_delay(attempt: u32) -> Duration {
    Backoff::RECONNECT.jittered(attempt, rand::random::<f64>())
}

/// Enrolls nodes with one token against one CA.
#[derive(Debug)]
pub struct Enroller {
    endpoint: Endpoint,
    ca_pem: String,
    token: String,
    anonymous: Arc<rustls::ClientConfig>,
}

impl Enroller {
    pub fn new(endpoint: Endpoint, ca_pem: String, token: String) -> Result<Self, EnrollError> {
        let anonymous = Arc::new(without_resumption(
            edgefleet_tls::client_config(&ca_pem, None).map_err(EnrollError::Ca)?,
        ));
        Ok(Self {
            endpoint,
            ca_pem,
            token,
            anonymous,
        })
    }

    /// Enrolls `name`, reusing (and replacing when broken) the worker's `connection`.
    pub async fn enroll(
        &self,
        connection: &mut Option<Connection>,
        name: &str,
        labels: Labels,
    ) -> Result<Enrolled, EnrollError> {
        let tls_error = |source| EnrollError::Tls {
            node: name.to_owned(),
            source,
        };
        let key = NodeKey::generate().map_err(tls_error)?;
        let request = EnrollRequest {
            token: self.token.clone(),
            name: name.to_owned(),
            labels,
            csr_pem: key.csr_pem(name).map_err(tls_error)?,
            facts: simulated_facts(name),
        };
        let body = serde_json::to_vec(&request).map_err(|error| EnrollError::Call {
            node: name.to_owned(),
            source: CallError::Decode {
                what: "enrollment",
                reason: error.to_string(),
            },
        })?;
        let mut attempt = 0;
        // A failure after the request went out: the server may have enrolled the node.
        let mut maybe_enrolled: Option<String> = None;
        let response: EnrollResponse = loop {
            match self.post(connection, body.clone()).await {
                Ok(response) => break response,
                Err(error) => {
                    if error.status() == Some(409)
                        && let Some(earlier) = maybe_enrolled.take()
                    {
                        return Err(EnrollError::AnswerLost {
                            node: name.to_owned(),
                            earlier,
                        });
                    }
                    if !matches!(error, CallError::Status { .. }) {
                        *connection = None;
                    }
                    if !matches!(
                        error,
                        CallError::Connect { .. } | CallError::Handshake { .. }
                    ) {
                        maybe_enrolled = Some(error.to_string());
                    }
                    if !retryable(&error) || attempt + 1 >= ATTEMPTS {
                        return Err(EnrollError::Call {
                            node: name.to_owned(),
                            source: error,
                        });
                    }
                    tracing::debug!(node = name, %error, attempt, "enrollment failed; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                }
            }
        };
        if response.node != name {
            return Err(EnrollError::WrongName {
                node: name.to_owned(),
                answered: response.node,
            });
        }
        let identity = ClientIdentity {
            cert_pem: response.certificate_pem,
            key_pem: key.to_pem(),
        };
        let tls = edgefleet_tls::client_config(&self.ca_pem, Some(&identity)).map_err(tls_error)?;
        Ok(Enrolled {
            tls: Arc::new(without_resumption(tls)),
            certificate_not_after: response.not_after,
        })
    }

    async fn post(
        &self,
        connection: &mut Option<Connection>,
        body: Vec<u8>,
    ) -> Result<EnrollResponse, CallError> {
        let what = "enrollment";
        let open = match connection {
            Some(existing) if existing.is_usable() => existing,
            _ => connection
                .insert(Connection::open(&self.endpoint, self.anonymous.clone(), what).await?),
        };
        open.send(
            &self.endpoint,
            Request::with_json(Method::Post, "/v1/enroll", body, ENROLL_TIMEOUT, what),
        )
        .await?
        .check(what)?
        .json(what)
    }
}

/// rustls keeps a 256-entry session cache per configuration by default, and every node
/// has a configuration of its own: tens of KiB per node for resumptions a simulated node
/// hardly ever makes. A reconnect does a full handshake instead, like a fresh agent.
fn without_resumption(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// The inventory a simulated node reports at enrollment.
fn simulated_facts(name: &str) -> NodeFacts {
    NodeFacts {
        hostname: name.to_owned(),
        os: OsFacts {
            name: "edgefleet-sim".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: "simulated".to_owned(),
        },
        arch: std::env::consts::ARCH.to_owned(),
        cpu: CpuFacts {
            model: "simulated".to_owned(),
            count: 1,
        },
        memory_bytes: 1 << 30,
        agent_version: edgefleet_wire::AGENT_VERSION.to_owned(),
        ..NodeFacts::default()
    }
}
