//! Running the operator's commands (boot hooks, `--on-change`, notice commands): each in a
//! process group of its own, bounded by a deadline, after which the whole group is
//! killed, so a hook's stray children cannot hold a boot either; a wait cut short (SIGTERM
//! dropped it) kills the group too.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start: {0}")]
    Spawn(std::io::Error),
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
    #[error("did not finish within {}; killed", humantime::format_duration(*.0))]
    TimedOut(Duration),
}

/// Runs `command` to its end, or kills its process group after `limit`.
pub async fn run_bounded(
    mut command: tokio::process::Command,
    limit: Duration,
) -> Result<ExitStatus, ChildError> {
    let mut child = command
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(ChildError::Spawn)?;
    let pid = child.id();
    // Dropped before the child is reaped (SIGTERM ended the wait), the whole group goes,
    // not the shell alone: its group id cannot be reused while the leader is unreaped.
    let mut group = Group(pid);
    let ended = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(ChildError::Wait),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            Err(ChildError::TimedOut(limit))
        }
    };
    group.0 = None;
    ended
}

/// A running child's process group, killed when dropped unless disarmed.
struct Group(Option<u32>);

impl Group {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// "exited with 3" / "killed by SIGTERM", for error messages.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}
