//! The orchestrator record, `<state dir>/lifecycle/record.json`: what bootstage told the auto
//! scaling group and CloudFormation (or could not tell them), the launch hook's heartbeats,
//! a hold in progress, and the instance's later life as the watcher saw it (a drain: why,
//! its deadline, how it ended, the termination hook's completion; the rebalance
//! recommendations and maintenance events acted on, and Azure's scheduled events approved,
//! so none is acted on twice). Whoever
//! signals writes it (the notices, `release`, the heartbeat watcher); `status` and the
//! watcher read it.
//!
//! Several processes update it, so every change is a read-modify-write under an exclusive
//! `flock` on `lifecycle/.lock`, written through the atomic writer: a reader sees the old
//! record or the new one, and no writer loses another's change. It has a directory of its
//! own so that the units which write it (the notices run the operator's command) may
//! write there and nowhere else in the state dir.

use std::fs::{OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::{StateDir, StateError, atomic};

/// One signal sent, or tried, to one orchestrator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// `CONTINUE`/`ABANDON` (Auto Scaling), `SUCCESS`/`FAILURE` (CloudFormation).
    pub result: String,
    pub at: String,
    /// The service took it (or had nothing waiting for it: see `note`).
    pub delivered: bool,
    /// Why it was not delivered, or what the service said instead of taking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A failed instance kept alive for debugging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// The failed unit and its error.
    pub reason: String,
    pub since: String,
    /// When the watcher abandons the instance, unless released before.
    pub until: String,
    /// `until` as seconds since the Unix epoch, for the watcher.
    pub until_unix: u64,
    /// Set when the asked-for hold was cut to the group's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The auto scaling group and its launch hook, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// When a lifecycle watcher (`bootstage-lifecycle.service`) first started this boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watcher_started_at: Option<String>,
    /// Heartbeats the group took.
    #[serde(default)]
    pub heartbeats: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<String>,
    /// The last heartbeat that was not delivered, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// CompleteLifecycleAction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asg: Option<Signal>,
    /// SignalResource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudformation: Option<Signal>,
    /// The warm pool's launch action (`Warmed:Pending:Wait`), completed before the
    /// instance went into service; `asg` is then the action of going into service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<Signal>,
    /// The instance's drain (one per instance life), once begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// CompleteLifecycleAction CONTINUE for the termination hook, after the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<Signal>,
    /// Rebalance recommendations seen, and the hooks run for them.
    #[serde(default, skip_serializing_if = "Rebalance::is_empty")]
    pub rebalance: Rebalance,
    /// The scheduled maintenance events whose `maintenance.d` hooks ran (their EventId).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<String>,
    /// The scheduled maintenance events whose `maintenance.d` run ended (done, failed or
    /// cut at its timeout; not cut by the watcher stopping): only these are approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_ran: Vec<String>,
    /// Azure: the scheduled events approved (`StartRequests`, their EventId), each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved: Vec<String>,
}

/// A drain: begun once, whatever the number of notices.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// `scale-in`, `spot`, `preempted` or `maintenance` (`BOOTSTAGE_DRAIN_REASON`).
    pub reason: String,
    /// What was seen, in a few words (the state, the Spot action, the event's code and id).
    pub why: String,
    pub started: String,
    /// When the hooks and stops must be over (`BOOTSTAGE_DRAIN_DEADLINE`).
    pub deadline: String,
    pub deadline_unix: u64,
    /// When the drain ended (hooks run and units stopped, or given up at the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// Why it failed or overran, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The units stopped, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
    /// Azure: the scheduled event approved once the drain is over (its EventId).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<String>,
}

/// Rebalance recommendations: each seen once, the soft hooks run once per episode, and
/// the undo once when no interruption followed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rebalance {
    /// The recommendations' `noticeTime`s seen, oldest first (the last [`REMEMBERED`]).
    #[serde(default)]
    pub notices: Vec<String>,
    /// Times `rebalance.d` ran.
    #[serde(default)]
    pub hooks_ran: u32,
    /// When `rebalance-undo.d` is due (Unix seconds): an episode in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_due_unix: Option<u64>,
    /// Times `rebalance-undo.d` ran.
    #[serde(default)]
    pub undone: u32,
}

impl Rebalance {
    pub fn is_empty(&self) -> bool {
        *self == Rebalance::default()
    }
}

/// The longest wait for another writer of the record.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many ids each of the record's lists of events keeps (`maintenance`,
/// `maintenance_ran`, `approved`, the rebalance notices): the latest, so a long life's
/// record stays small and no event still pending is forgotten.
pub const REMEMBERED: usize = 64;

/// `id` in `list` once, as its latest; the oldest dropped past [`REMEMBERED`].
pub fn remember(list: &mut Vec<String>, id: &str) {
    list.retain(|x| x != id);
    list.push(id.to_string());
    let extra = list.len().saturating_sub(REMEMBERED);
    list.drain(..extra);
}

fn dir(state: &StateDir) -> PathBuf {
    state.root().join("lifecycle")
}

fn path(state: &StateDir) -> PathBuf {
    dir(state).join("record.json")
}

/// The record; `None` when nothing was signalled this boot.
pub fn read(state: &StateDir) -> Result<Option<Record>, StateError> {
    let path = path(state);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Read {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read { path, source }),
    }
}

/// Changes the record under its lock and returns the new one. A record that cannot be
/// read is started afresh (it is a report, not an input the boot depends on).
pub fn update(state: &StateDir, change: impl FnOnce(&mut Record)) -> Result<Record, StateError> {
    let write_error = |path: PathBuf| move |source| StateError::Write { path, source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir(state))
        .map_err(write_error(dir(state)))?;
    let lock_path = dir(state).join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&lock_path)
        .map_err(write_error(lock_path.clone()))?;
    // Every holder only reads and writes a small file; still, a wait has a deadline.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::Write {
                    path: lock_path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "another process held the lifecycle record's lock for 5 s",
                    ),
                });
            }
            Err(TryLockError::Error(e)) => return Err(write_error(lock_path)(e)),
        }
    }
    let mut record = read(state).ok().flatten().unwrap_or_default();
    change(&mut record);
    let text = serde_json::to_vec_pretty(&record).expect("records serialize");
    atomic::write_file(&path(state), &text)
        .map_err(|(path, source)| StateError::Write { path, source })?;
    Ok(record)
}

impl Signal {
    /// Taken by the service (not merely "nothing was waiting"): a later signal that found
    /// nothing waiting must not replace it in the record.
    pub fn taken(&self) -> bool {
        self.delivered && self.note.is_none()
    }
}

/// Whether a final signal went through (taken, or nothing was waiting for it).
pub fn settled(signal: &Option<Signal>) -> bool {
    signal.as_ref().is_some_and(|s| s.delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each id once, as its latest, the oldest dropped past [`REMEMBERED`].
    #[test]
    fn a_list_of_events_keeps_each_once_and_the_latest() {
        let mut list: Vec<String> = vec!["a".into(), "b".into()];
        remember(&mut list, "a");
        assert_eq!(list, ["b", "a"]);
        let mut list: Vec<String> = (0..REMEMBERED).map(|i| i.to_string()).collect();
        remember(&mut list, "new");
        assert_eq!(list.len(), REMEMBERED);
        assert_eq!(
            (list[0].as_str(), list[REMEMBERED - 1].as_str()),
            ("1", "new")
        );
    }
}
