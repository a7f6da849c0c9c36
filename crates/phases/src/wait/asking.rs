//! Asking nodes themselves whether they answer ([`WaitSpec::ask_nodes`](super::WaitSpec::ask_nodes)),
//! in the background of the wait: each node as it joins, the nodes that did
//! not answer again every second, and (in a cluster of up to
//! [`KEEP_FRESH_UP_TO`](super::KEEP_FRESH_UP_TO) nodes) the others before
//! their answers stop standing. Entry point: [`Asking`].

use crate::membership::MembershipSource;
use crate::membership::SourceError;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// What one background ask found: the nodes asked, and those of them that
/// did not answer (each with what happened), or why nobody could be asked.
pub(super) type Answers = (Vec<String>, Result<Vec<(String, String)>, SourceError>);

/// Which nodes a background ask was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// Nodes that had just joined.
    Joined,
    /// The nodes that had not answered.
    Silent,
    /// Nodes whose answers were getting old (kept fresh, so the
    /// confirmation before ready has nothing to ask).
    Refresh,
}

/// The asks in flight. Dropping it stops them.
pub(super) struct Asking {
    source: Arc<dyn MembershipSource>,
    limit: Duration,
    joined: JoinSet<Answers>,
    silent: JoinSet<Answers>,
    refresh: JoinSet<Answers>,
}

impl Asking {
    /// Asks through `source`, each node to answer within `limit`.
    pub(super) fn new(source: Arc<dyn MembershipSource>, limit: Duration) -> Self {
        Self {
            source,
            limit,
            joined: JoinSet::new(),
            silent: JoinSet::new(),
            refresh: JoinSet::new(),
        }
    }

    fn spawn(&self, ids: Vec<String>) -> impl Future<Output = Answers> + Send + 'static {
        let (source, limit) = (self.source.clone(), self.limit);
        async move {
            let answer = source.silent_nodes(&ids, limit).await;
            (ids, answer)
        }
    }

    /// Asks nodes that have just joined.
    pub(super) fn joined(&mut self, ids: Vec<String>) {
        if !ids.is_empty() {
            let ask = self.spawn(ids);
            self.joined.spawn(ask);
        }
    }

    /// Asks the silent nodes again, unless they are being asked.
    pub(super) fn silent(&mut self, ids: Vec<String>) {
        if self.silent.is_empty() && !ids.is_empty() {
            let ask = self.spawn(ids);
            self.silent.spawn(ask);
        }
    }

    /// Asks nodes whose answers are getting old, unless a refresh is in
    /// flight.
    pub(super) fn refresh(&mut self, ids: Vec<String>) {
        if self.refresh.is_empty() && !ids.is_empty() {
            let ask = self.spawn(ids);
            self.refresh.spawn(ask);
        }
    }

    /// Whether answers are being refreshed.
    pub(super) fn refreshing(&self) -> bool {
        !self.refresh.is_empty()
    }

    /// Whether the silent nodes are being asked.
    pub(super) fn asking_silent(&self) -> bool {
        !self.silent.is_empty()
    }

    /// The next ask to end; pending while none is in flight.
    pub(super) async fn next(&mut self) -> (Asked, Answers) {
        loop {
            tokio::select! {
                Some(done) = self.joined.join_next(), if !self.joined.is_empty() => {
                    if let Ok(answers) = done {
                        return (Asked::Joined, answers);
                    }
                }
                Some(done) = self.silent.join_next(), if !self.silent.is_empty() => {
                    if let Ok(answers) = done {
                        return (Asked::Silent, answers);
                    }
                }
                Some(done) = self.refresh.join_next(), if !self.refresh.is_empty() => {
                    if let Ok(answers) = done {
                        return (Asked::Refresh, answers);
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Asks `ids` now, beside whatever is in flight, and returns which
    /// did not answer.
    pub(super) async fn ask_now(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, SourceError> {
        self.source.silent_nodes(ids, self.limit).await
    }
}
