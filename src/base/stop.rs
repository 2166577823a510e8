//! SIGTERM or SIGINT as a future: how a long-running command (a watcher, the lifecycle
//! heartbeats) learns that systemd or an operator wants it to end. Installed once, at the
//! start of the wait it ends, so a signal during the work before it is not lost.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM or SIGINT, as a future.
pub struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    /// Takes over SIGTERM and SIGINT from their default (ending the process at once).
    pub fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Returns when either signal arrives.
    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("stopping on a signal");
    }
}
