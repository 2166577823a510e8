//! A child's standard output, bounded: its last `max` bytes (cut at a line's start) kept
//! while it runs, the whole process group killed at the time limit, as `base::child`
//! does for the operator's commands (which needs no output, so keeps none). Standard
//! error is left to ours: the journal.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::base::child::ChildError;

/// What the child wrote, its last bytes.
#[derive(Debug)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Whether earlier output was dropped to keep within `max`.
    pub cut: bool,
    pub status: ExitStatus,
}

/// Runs `command` to its end (or kills its process group after `limit`), keeping the
/// last `max` bytes of its standard output.
pub async fn tail(
    mut command: tokio::process::Command,
    max: usize,
    limit: Duration,
) -> Result<Captured, ChildError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(ChildError::Spawn)?;
    let pid = child.id();
    let mut out = child.stdout.take().expect("stdout is piped");
    let run = async {
        let mut kept = Vec::new();
        let mut dropped = false;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = out.read(&mut chunk).await.map_err(ChildError::Wait)?;
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&chunk[..n]);
            // Drop the front in large steps, not at every chunk.
            if kept.len() > max.saturating_mul(2).max(chunk.len()) {
                kept.drain(..kept.len() - max);
                dropped = true;
            }
        }
        let status = child.wait().await.map_err(ChildError::Wait)?;
        Ok((kept, dropped, status))
    };
    let (mut bytes, mut cut, status) = match tokio::time::timeout(limit, run).await {
        Ok(done) => done?,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            return Err(ChildError::TimedOut(limit));
        }
    };
    if bytes.len() > max {
        bytes.drain(..bytes.len() - max);
        cut = true;
    }
    if cut {
        // Start at a whole line (unless one line is all there is).
        if let Some(newline) = bytes.iter().position(|&b| b == b'\n')
            && newline + 1 < bytes.len()
        {
            bytes.drain(..=newline);
        }
    }
    Ok(Captured { bytes, cut, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[tokio::test]
    async fn keeps_the_last_bytes_from_a_line_start() {
        let out = tail(sh("seq 1 100000"), 20, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out.bytes).unwrap(),
            "99998\n99999\n100000\n"
        );
        assert!(out.cut);
        assert!(out.status.success());
        let out = tail(
            sh("printf 'a\\nb\\n'; exit 3"),
            100,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!((out.bytes.as_slice(), out.cut), (&b"a\nb\n"[..], false));
        assert_eq!(out.status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_child_past_its_limit_is_killed_with_its_group() {
        let started = std::time::Instant::now();
        let err = tail(
            sh("sleep 30 & echo x; wait"),
            100,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ChildError::TimedOut(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
