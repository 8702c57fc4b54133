//! The HTTPS accept loop: TCP → TLS (rustls, client certificates optional) → HTTP/1.1
//! (hyper) → the axum router, with graceful shutdown.
//!
//! Each connection's verified client certificate is parsed once, after the handshake, and
//! attached to every request on it as a `PeerCertificate` extension. A failed handshake
//! or garbage on the port ends only that connection, logged at debug.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::PeerCertificate;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a request's headers within this time. hyper counts the idle time of
/// a kept-alive connection before the next request in it too, so this is also how long an
/// idle connection stays open: longer than an idle agent's heartbeat interval (5 min), or
/// every heartbeat would pay a new TLS handshake (kilobytes, on links billed by the byte).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(330);
/// How long shutdown waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (for example out of file descriptors) before retrying.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `shutdown` resolves; then stops accepting, flips `stopping` (which ends
/// long polls), and drains open connections.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    stopping: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let connection = serve_connection(tcp, peer, acceptor.clone(), app.clone(), graceful.watcher());
                    tokio::spawn(connection);
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    stopping.send_replace(true);
    tracing::info!(
        n_connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout; closing them");
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    watcher: Watcher,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let certificate = peer_certificate(&tls, peer);
    let service = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(certificate.clone());
        request
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// The client certificate rustls verified against the CA, parsed.
fn peer_certificate(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
) -> PeerCertificate {
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let info = der.and_then(|der| match edgefleet_tls::cert_info_der(der) {
        Ok(info) => Some(Arc::new(info)),
        Err(error) => {
            tracing::debug!(%peer, %error, "client certificate cannot be parsed");
            None
        }
    });
    PeerCertificate(info)
}
