//! Telling systemd how a stage is doing (sd_notify).
//!
//! `STATUS=` lines describe progress ("waiting for user-data: attempt 7, 3.1 s");
//! `READY=1` is sent only when the stage's work is on disk, so the next unit starts only
//! then. After `READY=1` we wait (bounded) on a `BARRIER=1` round trip, so systemd has
//! processed the readiness before this process exits: otherwise a fast exit can race it.
//! Without `NOTIFY_SOCKET` (run by hand) every call does nothing.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

use sd_notify::NotifyState;

/// How long to wait for systemd to acknowledge a barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Reports readiness and waits until systemd has taken it in.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        if self.enabled
            && let Err(e) = barrier()
        {
            tracing::debug!(error = %e, "systemd did not acknowledge the notification barrier");
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// sd_notify_barrier(3): send one end of a pipe with `BARRIER=1`; the manager closes it
/// once it has processed every earlier message, and we see end-of-file.
fn barrier() -> std::io::Result<()> {
    let (mut reader, writer) = std::io::pipe()?;
    sd_notify::notify_with_fds(
        false,
        &[NotifyState::Custom("BARRIER=1")],
        &[writer.as_fd()],
    )?;
    drop(writer);
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = reader.read(&mut [0u8; 1]);
        let _ = done.send(());
    });
    wait.recv_timeout(BARRIER_TIMEOUT)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "barrier timed out"))
}
