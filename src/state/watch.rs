//! The watch record, `<state dir>/watch.json`: what a running `s3-sync --watch` listens to
//! and whether it can, for `bootstage status`. Written (atomically) by the watcher when it
//! starts, when its queue becomes unreadable or readable again, and removed when it stops.
//! One watcher per state dir (the unit), so there is no other writer.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::{StateDir, atomic};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Seconds between polling passes.
    pub interval_secs: u64,
    /// The queue, if one wakes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Why the queue cannot be read, and since when; `None` while it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_problem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

pub fn path(state: &StateDir) -> PathBuf {
    state.root().join("watch.json")
}

/// Writes the record; a failure is logged, never fatal (the watcher goes on).
pub fn write(state: &StateDir, watch: &Watch) {
    use std::os::unix::fs::DirBuilderExt;
    let json = serde_json::to_vec_pretty(watch).expect("records serialize");
    // A watcher run by hand (`--from`) may be the first to use the state dir.
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state.root());
    if let Err((path, e)) = atomic::write_file(&path(state), &json) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the watch record");
    }
}

pub fn remove(state: &StateDir) {
    let _ = std::fs::remove_file(path(state));
}

/// The record of a running watcher, if any.
pub fn read(state: &StateDir) -> Option<Watch> {
    let bytes = std::fs::read(path(state)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Watch {
    /// One line for `bootstage status`.
    pub fn describe(&self) -> String {
        let every = humantime::format_duration(std::time::Duration::from_secs(self.interval_secs));
        match (&self.queue, &self.queue_problem) {
            (None, _) => format!("polling every {every}"),
            (Some(queue), None) => {
                format!("woken by {queue}; polling every {every} as the safety net")
            }
            (Some(queue), Some(problem)) => format!(
                "{queue} unreadable since {}: {problem}; polling every {every} meanwhile",
                self.since.as_deref().unwrap_or("?")
            ),
        }
    }
}
