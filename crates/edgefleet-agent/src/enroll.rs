//! Enrollment: turning a join string into a node identity, once.
//!
//! 1. Fetch the server's CA over a connection that trusts nothing but the CA whose
//!    fingerprint the join string carries (the TLS handshake refuses any other server,
//!    before a byte of the request is sent), and check the fingerprint of the CA received.
//! 2. Generate the node's key on the node and store it (0600); only a CSR leaves the node.
//! 3. POST `/v1/enroll` with the token, the name, labels, CSR and facts.
//! 4. Store certificate, CA and `server.json`.
//!
//! Network trouble is retried with jittered backoff (each failure logged at WARN); a
//! refusal (4xx: token expired, used up or revoked, name taken) or a server certificate
//! that fails the pin is fatal, with the server's own message.

use std::future::Future;

use anyhow::{Context, bail};
use edgefleet_tls::{NodeKey, cert_info, fingerprint_pem};
use edgefleet_wire::api::{CaInfo, EnrollRequest, EnrollResponse};
use edgefleet_wire::node::NodeFacts;
use edgefleet_wire::{JoinString, Labels};
use tracing::{info, warn};

use crate::channel::{CallError, REQUEST_TIMEOUT, build_client, send_json};
use crate::identity::{Identity, IdentityStore, ServerFile, pair_matches};
use crate::shutdown::Shutdown;

/// What the node asks to be enrolled as.
#[derive(Debug, Clone)]
pub struct EnrollParams {
    pub join: JoinString,
    pub name: String,
    pub labels: Labels,
}

/// Enrolls the node and stores its identity. `Ok(None)` if shutdown came first.
pub async fn enroll(
    store: &IdentityStore,
    params: &EnrollParams,
    facts: NodeFacts,
    shutdown: &mut Shutdown,
) -> anyhow::Result<Option<Identity>> {
    let join = &params.join;
    let base = join.url.trim_end_matches('/');
    let pinned = build_client(edgefleet_tls::pinned_client_config(&join.ca_sha256)?)?;
    let ca_url = format!("{base}/v1/ca");
    let Some(ca) = with_retries("fetching the server's CA", shutdown, || {
        send_json::<CaInfo>(pinned.get(&ca_url).timeout(REQUEST_TIMEOUT))
    })
    .await?
    else {
        return Ok(None);
    };
    let fingerprint = fingerprint_pem(&ca.ca_pem).context("reading the CA the server sent")?;
    if fingerprint != join.ca_sha256.to_ascii_lowercase() {
        bail!(
            "the server at {base} sent a CA with fingerprint {fingerprint}, but the join string pins {}; \
             check that the join string belongs to this server",
            join.ca_sha256
        );
    }

    let key = NodeKey::generate()?;
    store.write_key(&key)?;
    let request = EnrollRequest {
        token: join.secret.clone(),
        name: params.name.clone(),
        labels: params.labels.clone(),
        csr_pem: key.csr_pem(&params.name)?,
        facts,
    };
    let client = build_client(edgefleet_tls::client_config(&ca.ca_pem, None)?)?;
    let enroll_url = format!("{base}/v1/enroll");
    let Some(response) = with_retries("enrolling", shutdown, || {
        send_json::<EnrollResponse>(
            client
                .post(&enroll_url)
                .json(&request)
                .timeout(REQUEST_TIMEOUT),
        )
    })
    .await?
    else {
        return Ok(None);
    };

    cert_info(&response.certificate_pem).context("reading the certificate the server issued")?;
    if !pair_matches(&ca.ca_pem, &response.certificate_pem, &key.to_pem()) {
        bail!("the certificate the server issued does not match this node's key or CA");
    }
    store.write_enrolled(
        &response.certificate_pem,
        &ca.ca_pem,
        &ServerFile {
            url: base.to_owned(),
            node: response.node.clone(),
        },
    )?;
    info!(node = %response.node, server = base, not_after = %response.not_after, "enrolled");
    store
        .load()?
        .context("the identity is incomplete right after enrollment")
        .map(Some)
}

/// Calls until success, a permanent failure (an error) or shutdown (`Ok(None)`).
async fn with_retries<T, F, Fut>(
    what: &str,
    shutdown: &mut Shutdown,
    mut call: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut attempt = 0u32;
    loop {
        let result = tokio::select! {
            () = shutdown.wait() => return Ok(None),
            result = call() => result,
        };
        let error = match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) => error,
        };
        if let Some(problem) = error.certificate_problem() {
            bail!(
                "{what}: the server's TLS certificate was refused ({problem}); \
                 check that the join string belongs to this server"
            );
        }
        if error.is_permanent() {
            return Err(error).with_context(|| format!("{what} failed"));
        }
        let delay = crate::reconnect_delay(attempt);
        warn!(%error, attempt, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = shutdown.wait() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
