//! A cloneable shutdown signal for the agent's tasks.

use tokio::sync::watch;

/// Resolves once the agent is shutting down. Cheap to clone; every task holds one.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers the `Shutdown`s made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Waits for shutdown. A dropped trigger counts as shutdown.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
