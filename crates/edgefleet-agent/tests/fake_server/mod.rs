//! A small in-process stand-in for the edgefleet server's agent routes, over real TLS
//! with the real CA code, recording every request. Enough HTTP/1.1 for reqwest: one
//! request per connection, `Connection: close`.
//!
//! It stores flight-recorder events like the real server: once per `seq`, answering
//! `stored_through` (the highest `seq` stored). `offline` makes it unreachable (every
//! connection is dropped before the TLS handshake); `events_route_missing` makes it an
//! older server without the events route (404).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_tls::{Ca, cert_info_der};
use edgefleet_wire::api::{
    Ack, CaInfo, DesiredState, EnrollRequest, EnrollResponse, ErrorBody, RenewRequest,
    RenewResponse,
};
use edgefleet_wire::node::{EventBatch, EventsAck, NodeEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
    /// Serial of the client certificate presented, if any.
    pub client_serial: Option<String>,
    pub status: u16,
}

pub struct ServerState {
    pub requests: Vec<Recorded>,
    pub desired: Option<DesiredState>,
    /// Answer to `POST /v1/enroll` instead of enrolling.
    pub enroll_error: Option<(u16, String)>,
    /// Status to answer desired-state polls with instead of serving them.
    pub desired_error: Option<u16>,
    /// Validity of certificates issued at enrollment (renewals get an hour).
    pub enroll_validity: Duration,
    /// Flight-recorder events stored, once per seq, in the order they arrived.
    pub events: Vec<NodeEvent>,
    /// The seq of every event received, duplicates included, in the order received.
    pub events_received: Vec<u64>,
    /// Drop every connection at once, as if the server were unreachable.
    pub offline: bool,
    /// Answer `POST /v1/agent/events` with 404, like a server older than the route.
    pub events_route_missing: bool,
}

pub struct FakeServer {
    pub url: String,
    pub ca_pem: String,
    pub ca_sha256: String,
    pub state: Arc<Mutex<ServerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start() -> Self {
        let now = time::OffsetDateTime::now_utc();
        let (ca, issued) = Ca::generate("fake CA", now).unwrap();
        let server = ca
            .issue_server(
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = format!("{}{}", server.cert_pem, issued.cert_pem);
        let config = edgefleet_tls::server_config(&chain, &server.key_pem, ca.cert_pem()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ServerState {
            requests: Vec::new(),
            desired: None,
            enroll_error: None,
            desired_error: None,
            enroll_validity: Duration::from_secs(3600),
            events: Vec::new(),
            events_received: Vec::new(),
            offline: false,
            events_route_missing: false,
        }));
        let ca = Arc::new(ca);
        let task = {
            let state = state.clone();
            let ca = ca.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    if state.lock().unwrap().offline {
                        drop(tcp);
                        continue;
                    }
                    let (acceptor, state, ca) = (acceptor.clone(), state.clone(), ca.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, state, ca).await;
                        }
                    });
                }
            })
        };
        Self {
            url,
            ca_pem: ca.cert_pem().to_owned(),
            ca_sha256: ca.fingerprint().unwrap(),
            state,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, method: &str, path_prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .collect()
    }

    pub fn set_desired(&self, desired: DesiredState) {
        self.state.lock().unwrap().desired = Some(desired);
    }

    pub fn set_offline(&self, offline: bool) {
        self.state.lock().unwrap().offline = offline;
    }

    /// The flight-recorder events stored so far.
    pub fn events(&self) -> Vec<NodeEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// The join string for this server.
    pub fn join(&self) -> String {
        edgefleet_wire::JoinString {
            url: self.url.clone(),
            secret: "tok.secret".into(),
            ca_sha256: self.ca_sha256.clone(),
        }
        .encode()
    }
}

async fn serve(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    state: Arc<Mutex<ServerState>>,
    ca: Arc<Ca>,
) {
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| cert_info_der(der.as_ref()).ok());
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    let (status, response) = respond(&method, &path, &body, client.as_ref(), &state, &ca).await;
    state.lock().unwrap().requests.push(Recorded {
        method,
        path,
        body,
        client_serial: client.map(|c| c.serial),
        status,
    });
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
        response.len()
    );
    let _ = tls.write_all(reply.as_bytes()).await;
    let _ = tls.shutdown().await;
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

fn error(status: u16, message: &str) -> (u16, String) {
    (
        status,
        json(&ErrorBody {
            code: "error".into(),
            message: message.into(),
            details: vec![],
        }),
    )
}

async fn respond(
    method: &str,
    path: &str,
    body: &str,
    client: Option<&edgefleet_tls::CertInfo>,
    state: &Mutex<ServerState>,
    ca: &Ca,
) -> (u16, String) {
    let now = time::OffsetDateTime::now_utc();
    let route = path.split('?').next().unwrap_or_default();
    match (method, route) {
        ("GET", "/v1/ca") => (
            200,
            json(&CaInfo {
                ca_pem: ca.cert_pem().to_owned(),
                ca_sha256: ca.fingerprint().unwrap(),
            }),
        ),
        ("POST", "/v1/enroll") => {
            let (refusal, validity) = {
                let state = state.lock().unwrap();
                (state.enroll_error.clone(), state.enroll_validity)
            };
            if let Some((status, message)) = refusal {
                return error(status, &message);
            }
            let request: EnrollRequest = serde_json::from_str(body).unwrap();
            let (certificate_pem, info) = ca
                .sign_node_csr(&request.csr_pem, &request.name, now, validity)
                .unwrap();
            (
                200,
                json(&EnrollResponse {
                    node: request.name,
                    certificate_pem,
                    ca_pem: ca.cert_pem().to_owned(),
                    not_after: info.not_after,
                }),
            )
        }
        (_, route) if route.starts_with("/v1/agent/") && client.is_none() => {
            error(401, "client certificate required")
        }
        ("POST", "/v1/agent/renew") => {
            let request: RenewRequest = serde_json::from_str(body).unwrap();
            let node = client.unwrap().common_name.clone();
            let (certificate_pem, info) = ca
                .sign_node_csr(&request.csr_pem, &node, now, Duration::from_secs(3600))
                .unwrap();
            (
                200,
                json(&RenewResponse {
                    certificate_pem,
                    not_after: info.not_after,
                }),
            )
        }
        ("GET", "/v1/agent/desired") => {
            let known: u64 = path
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix("known_generation="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Hold the poll for up to a second, like the real long poll (shortened).
            for _ in 0..50 {
                let (failure, desired) = {
                    let state = state.lock().unwrap();
                    (state.desired_error, state.desired.clone())
                };
                if let Some(status) = failure {
                    return error(status, "refused by the test");
                }
                if let Some(desired) = desired
                    && desired.generation != known
                {
                    return (200, json(&desired));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (304, String::new())
        }
        ("POST", "/v1/agent/events") => {
            let mut state = state.lock().unwrap();
            if state.events_route_missing {
                return error(404, "no such route");
            }
            let batch: EventBatch = match serde_json::from_str(body) {
                Ok(batch) => batch,
                Err(e) => return error(400, &format!("bad event batch: {e}")),
            };
            for event in batch.events {
                state.events_received.push(event.seq);
                if !state.events.iter().any(|e| e.seq == event.seq) {
                    state.events.push(event);
                }
            }
            let stored_through = state.events.iter().map(|e| e.seq).max().unwrap_or(0);
            (200, json(&EventsAck { stored_through }))
        }
        ("PUT", "/v1/agent/status")
        | ("PUT", "/v1/agent/facts")
        | ("POST", "/v1/agent/heartbeat") => (200, json(&Ack { ok: true })),
        _ => error(404, "no such route"),
    }
}
