//! Stop requests: SIGTERM or SIGINT ask for a graceful stop; a second one
//! forces it (SIGKILL instead of waiting out grace periods).

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Resolves [`Shutdown::requested`] on the first stop request and
/// [`Shutdown::forced`] on the second.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u32>,
}

/// Triggers a [`Shutdown`] by hand (tests, embedding).
pub struct Trigger {
    tx: watch::Sender<u32>,
}

impl Trigger {
    /// Requests a stop; a second call forces it.
    pub fn request(&self) {
        self.tx.send_modify(|n| *n += 1);
    }
}

impl Shutdown {
    /// A shutdown triggered only by hand.
    pub fn manual() -> (Self, Trigger) {
        let (tx, rx) = watch::channel(0);
        (Self { rx }, Trigger { tx })
    }

    /// Installs SIGTERM and SIGINT handlers (call inside the runtime).
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (shutdown, trigger) = Self::manual();
        tokio::spawn(async move {
            loop {
                let which = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                let first = *trigger.tx.borrow() == 0;
                if first {
                    tracing::info!(
                        "{which} received: stopping gracefully (send it again to force)"
                    );
                } else {
                    tracing::warn!("{which} received again: forcing the stop");
                }
                trigger.request();
            }
        });
        Ok(shutdown)
    }

    /// Whether a stop was requested already.
    pub(crate) fn is_requested(&self) -> bool {
        *self.rx.borrow() > 0
    }

    /// Whether a second stop request forced the stop.
    pub(crate) fn is_forced(&self) -> bool {
        *self.rx.borrow() > 1
    }

    /// Resolves when a stop was requested.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// Resolves when a second stop request forces the stop.
    pub(crate) async fn forced(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|n| *n > 1).await;
    }
}
