//! The HTTPS JSON client of the operator API (`/v1/...`).
//!
//! It trusts only the server's CA (never the system roots), sends the API token as a bearer
//! token, and turns every failure into a `ClientError` whose message tells the operator what
//! to do: an `ErrorBody` from the server is shown as its message and details; a refused
//! connection asks whether the server runs and whether `--server` is right.

use std::error::Error as _;
use std::time::Duration;

use edgefleet_wire::api::ErrorBody;
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::Connection;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with its error body.
    #[error("{}", render_error_body(body))]
    Api { status: u16, body: ErrorBody },
    #[error(
        "cannot reach the edgefleet server at {url}: {cause} (is `edgefleet server` running? is --server right?)"
    )]
    Unreachable { url: String, cause: String },
    #[error(
        "cannot establish a trusted connection to {url}: {cause} (is --ca-cert, or caCert in the config, the CA of this server?)"
    )]
    Tls { url: String, cause: String },
    #[error("the edgefleet server at {url} did not answer within {seconds}s")]
    Timeout { url: String, seconds: u64 },
    #[error("the server answered {method} {path} with HTTP {status}: {text}")]
    Http {
        method: Method,
        path: String,
        status: u16,
        text: String,
    },
    #[error("unexpected answer from the server to {method} {path}: {cause}")]
    Decode {
        method: Method,
        path: String,
        cause: String,
    },
    #[error("request to {url} failed: {cause}")]
    Other { url: String, cause: String },
}

/// `message`, then each detail on its own line, indented, then a hint for common codes.
pub fn render_error_body(body: &ErrorBody) -> String {
    let mut out = body.message.clone();
    for detail in &body.details {
        out.push_str("\n  ");
        out.push_str(detail);
    }
    if body.code == "unauthorized" {
        out.push_str(
            "\n  hint: check the API token (--token, EDGEFLEET_TOKEN or token in the config file), \
             or run `edgefleet login`",
        );
    }
    out
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl ApiClient {
    /// A client that trusts `connection.ca_pem` and sends `connection.token`.
    pub fn new(connection: &Connection) -> anyhow::Result<Self> {
        let tls = edgefleet_tls::client_config(&connection.ca_pem, None)
            .map_err(|e| anyhow::anyhow!("the configured CA certificate is unusable: {e}"))?;
        Self::with_tls(&connection.server, connection.token.clone(), tls)
    }

    /// A client with its own TLS configuration (login uses a CA-pinning one).
    pub fn with_tls(
        server: &str,
        token: Option<String>,
        tls: rustls::ClientConfig,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(server)
            .map_err(|e| anyhow::anyhow!("invalid server URL {server:?}: {e}"))?;
        if base.scheme() != "https" {
            anyhow::bail!("invalid server URL {server:?}: it must start with https://");
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("edgefleet-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self { http, base, token })
    }

    /// Fails unless a token is configured; every operator route needs one.
    pub fn require_token(self) -> anyhow::Result<Self> {
        if self.token.is_none() {
            anyhow::bail!(
                "no API token configured: pass --token or set EDGEFLEET_TOKEN, or run `edgefleet login` \
                 (the admin token of a local server is in its data directory, file admin.token)"
            );
        }
        Ok(self)
    }

    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of `segments` (each percent-encoded) under the base URL, with a query.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.send(Method::GET, segments, query, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, segments, &[], Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::PATCH, segments, &[], Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        self.send(Method::DELETE, segments, &[], None::<&()>).await
    }

    /// A GET whose body is read as it arrives, for as long as it runs (`edgefleet logs
    /// -f`): only the response head must come within the usual request timeout. An error
    /// status becomes a `ClientError` like for every other call.
    pub async fn get_stream(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        // The client's timeout covers the whole body; a stream has no end to time.
        const NO_END: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let url = self.url(segments, query);
        let path = url.path().to_owned();
        let mut request = self.http.get(url).timeout(NO_END);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.server().to_owned(),
                seconds: REQUEST_TIMEOUT.as_secs(),
            })?
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                body,
            },
            Err(_) => ClientError::Http {
                method: Method::GET,
                path,
                status: status.as_u16(),
                text: snippet(&bytes),
            },
        })
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send_with(method, segments, query, |request| match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }

    /// A call whose request `finish` completes (a streamed body, its own timeout, extra
    /// headers), with the JSON answer and the errors of every other call.
    pub async fn send_with<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        finish: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let url = self.url(segments, query);
        let path = url.path().to_owned();
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request = finish(request);
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status: status.as_u16(),
                    body,
                },
                Err(_) => ClientError::Http {
                    method,
                    path,
                    status: status.as_u16(),
                    text: snippet(&bytes),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            method,
            path,
            cause: e.to_string(),
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> ClientError {
        let url = self.server().to_owned();
        if error.is_timeout() {
            return ClientError::Timeout {
                url,
                seconds: REQUEST_TIMEOUT.as_secs(),
            };
        }
        let chain = Chain::of(error);
        if let Some(tls) = chain.rustls {
            return ClientError::Tls {
                url,
                cause: tls.to_string(),
            };
        }
        if error.is_connect() {
            return ClientError::Unreachable {
                url,
                cause: chain.innermost,
            };
        }
        ClientError::Other {
            url,
            cause: chain.innermost,
        }
    }
}

/// What the source chain of a transport error holds that matters to the operator.
struct Chain<'a> {
    rustls: Option<&'a rustls::Error>,
    /// The most specific message: `Connection refused (os error 111)` rather than reqwest's
    /// `error sending request for url (...)`.
    innermost: String,
}

impl<'a> Chain<'a> {
    fn of(error: &'a reqwest::Error) -> Self {
        let mut innermost = error.to_string();
        let mut rustls = None;
        let mut current: Option<&'a (dyn std::error::Error + 'static)> = error.source();
        while let Some(err) = current {
            innermost = err.to_string();
            rustls = rustls.or_else(|| find_rustls(err));
            current = err.source();
        }
        Self { rustls, innermost }
    }
}

/// The rustls error in `error`, looking through nested `io::Error`s: they hide their custom
/// payload from `source()`, and the TLS stack wraps its error in two of them.
fn find_rustls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// The start of a non-JSON error body, on one line.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str, details: &[&str]) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            details: details.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn error_body_renders_message_and_indented_details() {
        let error = ClientError::Api {
            status: 422,
            body: body(
                "invalid_manifest",
                "deployment \"web\" is invalid",
                &[
                    "spec.workloads[0].name: is empty",
                    "spec.priority: too large",
                ],
            ),
        };
        assert_eq!(
            crate::render_error(&anyhow::Error::new(error)),
            "error: deployment \"web\" is invalid\n  spec.workloads[0].name: is empty\n  spec.priority: too large"
        );
        let not_found = ClientError::Api {
            status: 404,
            body: body("not_found", "node \"x\" not found", &[]),
        };
        assert_eq!(
            crate::render_error(&not_found.into()),
            "error: node \"x\" not found"
        );
    }

    #[test]
    fn unauthorized_adds_a_hint() {
        let text = render_error_body(&body("unauthorized", "invalid API token", &[]));
        assert!(text.starts_with("invalid API token\n  hint: "), "{text}");
        assert!(text.contains("edgefleet login"));
    }

    #[test]
    fn urls_encode_segments_and_queries() {
        let tls = rustls::ClientConfig::builder_with_provider(edgefleet_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = ApiClient::with_tls("https://127.0.0.1:7443/", None, tls).unwrap();
        assert_eq!(client.server(), "https://127.0.0.1:7443");
        assert_eq!(
            client
                .url(
                    &["v1", "nodes", "a b/c"],
                    &[("selector", "site in (a,b),!gpu".into())]
                )
                .as_str(),
            "https://127.0.0.1:7443/v1/nodes/a%20b%2Fc?selector=site+in+%28a%2Cb%29%2C%21gpu"
        );
        assert!(client.require_token().is_err());
    }

    #[tokio::test]
    async fn refused_connection_says_what_to_check() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls = rustls::ClientConfig::builder_with_provider(edgefleet_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = format!("https://127.0.0.1:{port}");
        let client = ApiClient::with_tls(&server, Some("t".into()), tls).unwrap();
        let error = client
            .get::<serde_json::Value>(&["readyz"], &[])
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the edgefleet server at {server}: ")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
        assert!(
            text.ends_with("(is `edgefleet server` running? is --server right?)"),
            "{text}"
        );
    }

    #[test]
    fn snippets_are_short_single_lines() {
        assert_eq!(snippet(b"  bad\n gateway "), "bad gateway");
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(snippet("x".repeat(300).as_bytes()).len(), 203);
    }
}
