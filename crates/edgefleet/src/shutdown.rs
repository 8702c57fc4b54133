//! The operator's stop request: Ctrl-C (SIGINT) or SIGTERM, whichever comes first.

use std::future::Future;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed now, not when the
/// future is first polled, so a signal that arrives during start-up is not lost (and does not
/// kill the process with the default action). Needs a tokio runtime.
pub fn requested() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
