//! SIGTERM and SIGINT as a stop request.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Resolves [`Shutdown::requested`] once SIGTERM or SIGINT arrives.
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the handlers (call inside the runtime).
    pub fn install() -> Result<Self> {
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!("{which} received: stopping");
            let _ = tx.send(true);
        });
        Ok(Self { rx })
    }

    /// Whether a stop was requested already.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a stop was requested.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}
