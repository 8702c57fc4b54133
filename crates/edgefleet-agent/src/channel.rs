//! The agent's channel to the server: one mTLS HTTP client shared by every task, and the
//! error type of its calls.
//!
//! The client is swapped in place after a certificate renewal (`replace_identity`): tasks
//! take a clone of the current client for each request, so requests in flight finish on
//! the old connection and the next ones use the new certificate. Nothing restarts.

use std::error::Error as StdError;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use edgefleet_tls::{CertInfo, ClientIdentity};
use edgefleet_wire::api::ErrorBody;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::identity::Identity;

/// How long connecting to the server may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for a request that is not a long poll.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds an HTTP client on a ready rustls configuration. HTTP/1.1 only (reqwest is built
/// without HTTP/2), keep-alive so an idle node holds one connection, not one per request.
pub fn build_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(60))
        .pool_max_idle_per_host(2)
        // An idle node talks every few minutes: a new TLS handshake (with the client
        // certificate, about 5 KB) each time would cost more than everything else.
        .pool_idle_timeout(None)
        .user_agent(concat!("edgefleet-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Debug)]
struct Current {
    client: reqwest::Client,
    certificate: CertInfo,
}

/// The node's authenticated channel to its server.
#[derive(Debug)]
pub struct ServerChannel {
    base_url: String,
    node: String,
    ca_pem: String,
    current: RwLock<Current>,
}

impl ServerChannel {
    pub fn new(identity: &Identity) -> anyhow::Result<Self> {
        let client = mtls_client(&identity.ca_pem, &identity.client_identity())?;
        Ok(Self {
            base_url: identity.server_url.trim_end_matches('/').to_owned(),
            node: identity.node.clone(),
            ca_pem: identity.ca_pem.clone(),
            current: RwLock::new(Current {
                client,
                certificate: identity.certificate.clone(),
            }),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// `path` (starting with `/`) on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The current client. Cheap: clients share their connection pool.
    pub fn client(&self) -> reqwest::Client {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .client
            .clone()
    }

    /// The certificate the current client presents.
    pub fn certificate(&self) -> CertInfo {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .certificate
            .clone()
    }

    /// Switches every later request to a new client certificate.
    pub fn replace_identity(
        &self,
        identity: &ClientIdentity,
        certificate: CertInfo,
    ) -> anyhow::Result<()> {
        let client = mtls_client(&self.ca_pem, identity)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            client,
            certificate,
        };
        Ok(())
    }
}

fn mtls_client(ca_pem: &str, identity: &ClientIdentity) -> anyhow::Result<reqwest::Client> {
    let tls = edgefleet_tls::client_config(ca_pem, Some(identity))?;
    Ok(build_client(tls)?)
}

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused or reset, DNS, timeout, TLS handshake.
    #[error("{}", error_chain(.0))]
    Transport(#[source] reqwest::Error),
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// The server answered 2xx with a body we cannot read.
    #[error("unexpected response from the server: {0}")]
    Decode(String),
}

impl CallError {
    /// The server refuses our certificate (revoked, or unknown to it).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Status { status, .. }
            if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN)
    }

    /// Retrying the same request cannot help: a 4xx other than timeouts and rate limits.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS
            }
            Self::Decode(_) => true,
            Self::Transport(_) => false,
        }
    }

    /// When the TLS handshake failed because of the server's certificate, the reason.
    pub fn certificate_problem(&self) -> Option<String> {
        let Self::Transport(error) = self else {
            return None;
        };
        let mut next: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(current) = next {
            if let Some(tls) = find_rustls_error(current)
                && matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)
                )
            {
                return Some(tls.to_string());
            }
            next = current.source();
        }
        None
    }
}

/// A rustls error at this link of the chain. `io::Error` hides its inner error from
/// `source()` (and connectors nest one `io::Error` in another), so unwrap those explicitly.
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: &(dyn StdError + 'static) = error;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current.downcast_ref::<std::io::Error>()?.get_ref()?;
        current = inner;
    }
}

/// `error: cause: cause`, without repeating a cause the previous message already shows.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        next = cause.source();
    }
    text
}

/// Sends `request` and returns the raw response if its status is a success (or 304).
pub async fn send_raw(request: RequestBuilder) -> Result<reqwest::Response, CallError> {
    let response = request.send().await.map_err(CallError::Transport)?;
    let status = response.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(response);
    }
    Err(CallError::Status {
        status,
        message: error_message(response).await,
    })
}

/// Sends `request` and decodes a JSON success body.
pub async fn send_json<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, CallError> {
    let response = send_raw(request).await?;
    decode(response).await
}

pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
    let bytes = response.bytes().await.map_err(CallError::Transport)?;
    serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
}

/// The message of an `ErrorBody`, or the start of whatever else the server sent.
async fn error_message(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) {
        if body.details.is_empty() {
            return body.message;
        }
        return format!("{} ({})", body.message, body.details.join("; "));
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return "no details".to_owned();
    }
    text.chars().take(200).collect()
}
