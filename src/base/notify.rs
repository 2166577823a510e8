//! Telling systemd how a stage is doing (sd_notify).
//!
//! `STATUS=` lines describe progress ("waiting for user-data: attempt 7, 3.1 s");
//! `READY=1` is sent only when the stage's work is on disk, so the next unit starts only
//! then. Before the process exits, [`Notifier::settle`] waits (bounded) on a `BARRIER=1`
//! round trip, so systemd has processed the readiness (or the failure status) first:
//! otherwise a fast exit can race it. A process that goes on (watch mode) never waits.
//! `STATUS=` is sent without blocking and dropped if the manager's queue is full: a busy
//! PID 1 must never stall a stage over a progress line (sd-notify's own send blocks, which
//! froze our single-threaded runtime in the benchmark). Without `NOTIFY_SOCKET` (run by
//! hand) every call does nothing.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
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

    /// Best effort: never blocks. One line (a newline would end the field): an error of
    /// several lines is joined.
    pub fn status(&self, status: &str) {
        let status: Vec<&str> = status.lines().map(str::trim).collect();
        if self.enabled
            && let Err(e) = send_nonblocking(&format!("STATUS={}\n", status.join(" ")))
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            tracing::debug!(error = %e, "cannot send a status to systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Waits until systemd has processed every notification sent so far; call it right
    /// before the process exits.
    pub fn settle(&self) {
        if self.enabled
            && let Err(e) = barrier()
        {
            tracing::debug!(error = %e, "systemd did not acknowledge the notification barrier");
        }
    }

    /// A configuration reload starts (watch mode's change hook); READY=1 ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// How often to send WATCHDOG=1, when the unit sets WatchdogSec= for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        let mut usec = 0;
        (self.enabled && sd_notify::watchdog_enabled(false, &mut usec))
            .then(|| Duration::from_micros(usec / 2))
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

fn send_nonblocking(message: &str) -> std::io::Result<()> {
    let path = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
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
