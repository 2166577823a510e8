//! Running the operator's commands (boot hooks, `--on-change`, notice commands): each in a
//! process group of its own, bounded by a deadline, after which the whole group is
//! killed, so a hook's stray children cannot hold a boot either.

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
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(ChildError::Wait),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(ChildError::TimedOut(limit))
        }
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
