//! Certificate renewal, with no restart and no disruption of workloads.
//!
//! `edgefleet_core::lifecycle::renewal_decision` says when (at two thirds of the
//! certificate's life); its waits are capped at 15 minutes and slept on the monotonic
//! clock, so a wall clock that jumps is noticed within the cap. Renewing: a fresh key and
//! CSR, `POST /v1/agent/renew` over the current certificate, the new pair written to disk
//! (the old one stays until both new files are there), then the shared client is swapped.

use std::sync::Arc;

use anyhow::Context;
use edgefleet_core::lifecycle::{RENEWAL_CHECK_CAP, RenewalDecision, renewal_decision};
use edgefleet_tls::{CertInfo, ClientIdentity, NodeKey, cert_info};
use edgefleet_wire::api::{RenewRequest, RenewResponse};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::channel::{REQUEST_TIMEOUT, ServerChannel, send_json};
use crate::identity::{IdentityStore, pair_matches};
use crate::shutdown::Shutdown;

pub async fn run(
    channel: Arc<ServerChannel>,
    store: IdentityStore,
    ca_pem: String,
    mut shutdown: Shutdown,
) {
    let mut failures = 0u32;
    let mut just_renewed = false;
    loop {
        let current = channel.certificate();
        let now = OffsetDateTime::now_utc();
        let delay = match renewal_decision(now, current.not_before, current.not_after) {
            RenewalDecision::Wait(delay) => {
                just_renewed = false;
                delay
            }
            RenewalDecision::Renew if just_renewed => {
                // A certificate fresh from the server already looks due: our clock is off.
                // Do not hammer the server; look again later.
                warn!(not_before = %current.not_before, not_after = %current.not_after, now = %now, "the new certificate already looks due for renewal; is the clock wrong?");
                just_renewed = false;
                RENEWAL_CHECK_CAP
            }
            RenewalDecision::Renew => match renew(&channel, &store, &ca_pem).await {
                Ok(renewed) => {
                    info!(not_after = %renewed.not_after, "renewed the node certificate");
                    failures = 0;
                    just_renewed = true;
                    continue;
                }
                Err(problem) => {
                    let delay = crate::reconnect_delay(failures.saturating_add(4));
                    if now >= current.not_after {
                        error!(error = %format!("{problem:#}"), not_after = %current.not_after, "the node certificate has expired and could not be renewed; the node may have to enroll again");
                    } else {
                        warn!(error = %format!("{problem:#}"), not_after = %current.not_after, retry_in_ms = delay.as_millis() as u64, "certificate renewal failed");
                    }
                    failures = failures.saturating_add(1);
                    delay
                }
            },
        };
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(delay.min(RENEWAL_CHECK_CAP)) => {}
        }
    }
}

async fn renew(
    channel: &ServerChannel,
    store: &IdentityStore,
    ca_pem: &str,
) -> anyhow::Result<CertInfo> {
    let key = NodeKey::generate()?;
    let request = RenewRequest {
        csr_pem: key.csr_pem(channel.node())?,
    };
    let response: RenewResponse = send_json(
        channel
            .client()
            .post(channel.url("/v1/agent/renew"))
            .json(&request)
            .timeout(REQUEST_TIMEOUT),
    )
    .await?;
    let certificate =
        cert_info(&response.certificate_pem).context("reading the renewed certificate")?;
    let key_pem = key.to_pem();
    if !pair_matches(ca_pem, &response.certificate_pem, &key_pem) {
        anyhow::bail!("the renewed certificate does not match the new key or the CA");
    }
    store.write_renewed(&key_pem, &response.certificate_pem)?;
    channel.replace_identity(
        &ClientIdentity {
            cert_pem: response.certificate_pem,
            key_pem,
        },
        certificate.clone(),
    )?;
    Ok(certificate)
}
