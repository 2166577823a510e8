//! Each stage's status record in `<state dir>/status/<stage>.json`: what `status`, `query`
//! and the notices read to know where a boot stands.
//!
//! A stage writes its record when it starts (`running`, with its pid) and when it ends
//! (`done`, or `failed` with the error and exit code), always through the atomic writer,
//! and before it tells systemd READY, so the next unit never sees a stale record. No record
//! is `pending`. A `running` record whose process is gone (killed, or the machine cut its
//! unit short) reads as `failed`: the pid's start time is kept with it so a reused pid is
//! not mistaken for the stage. Records live in the state dir (a tmpfs under systemd), so
//! each boot starts with none.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::base::exit::ExitStatus;
use crate::base::switch;
use crate::state::{StateDir, StateError, atomic};

/// The stages with a unit of their own, in boot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Metadata,
    S3Sync,
    Hooks,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Metadata, Stage::S3Sync, Stage::Hooks];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Metadata => "metadata",
            Stage::S3Sync => "s3-sync",
            Stage::Hooks => "hooks",
        }
    }

    /// The stage a unit runs, from the unit's name (`bootstage-s3-sync.service`).
    pub fn of_unit(unit: &str) -> Option<Stage> {
        let name = unit.strip_prefix("bootstage-")?.strip_suffix(".service")?;
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Done,
    Failed,
    Disabled,
}

/// One stage's record, as stored and as `status --json` and notices show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub stage: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The pid's start time (clock ticks after boot, /proc/PID/stat), against pid reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Milliseconds from the kernel's boot to the stage's start (CLOCK_BOOTTIME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_after_boot_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    fn empty(stage: Stage, state: State) -> Record {
        Record {
            stage: stage.name().into(),
            state,
            pid: None,
            pid_start: None,
            started_at: None,
            started_after_boot_ms: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            error: None,
        }
    }
}

pub fn status_dir(state: &StateDir) -> PathBuf {
    state.root().join("status")
}

fn record_path(state: &StateDir, stage: Stage) -> PathBuf {
    status_dir(state).join(format!("{}.json", stage.name()))
}

/// Runs one stage's work between its `running` and its `done`/`failed` record. Writing a
/// record is best effort: a report that cannot be written must not fail the boot.
pub async fn track<T, E: ExitStatus + std::fmt::Display>(
    state: &StateDir,
    stage: Stage,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let pid = std::process::id();
    let mut record = Record {
        pid: Some(pid),
        pid_start: process_start(pid),
        started_at: Some(timestamp(SystemTime::now())),
        started_after_boot_ms: since_boot_ms(),
        ..Record::empty(stage, State::Running)
    };
    store(state, &record);
    let result = work.await;
    record.finished_at = Some(timestamp(SystemTime::now()));
    record.duration_ms = Some(started.elapsed().as_millis() as u64);
    match &result {
        Ok(_) => record.state = State::Done,
        Err(e) => {
            record.state = State::Failed;
            record.exit_code = Some(e.exit_code() as u8);
            record.error = Some(e.to_string());
        }
    }
    store(state, &record);
    result
}

fn store(state: &StateDir, record: &Record) {
    let dir = status_dir(state);
    let stage = record.stage.clone();
    let path = dir.join(format!("{stage}.json"));
    let mut text = serde_json::to_string_pretty(record).expect("records serialize");
    text.push('\n');
    let written = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| (dir.clone(), e))
        .and_then(|()| atomic::write_file(&path, text.as_bytes()));
    if let Err((path, e)) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the stage's status");
    }
}

/// Whether `stage` has a `done` record (this boot: the state dir is a tmpfs).
pub fn is_done(state: &StateDir, stage: Stage) -> bool {
    matches!(read(state, stage), Ok(r) if r.state == State::Done)
}

/// One stage's record as it stands, with a vanished `running` process read as `failed`.
pub fn read(state: &StateDir, stage: Stage) -> Result<Record, StateError> {
    let path = record_path(state, stage);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        // No record (or no state dir yet): the stage has not started. A reader without
        // permission gets PermissionDenied here, never a guess.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Record::empty(stage, State::Pending));
        }
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let mut record: Record = serde_json::from_slice(&text).map_err(|e| StateError::Read {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    if record.state == State::Running && !alive(record.pid, record.pid_start) {
        record.state = State::Failed;
        record.error = Some(format!(
            "the {} stage (pid {}) ended without finishing: killed or stopped",
            stage.name(),
            record.pid.unwrap_or(0)
        ));
    }
    Ok(record)
}

/// Whether a stage wrote a `failed` record itself. Unlike [`read`], this never infers a
/// failure from a `running` record whose process it cannot see: a reader without
/// capabilities under `ProtectProc=invisible` cannot see a stage that kept some.
pub fn failure_written(state: &StateDir) -> bool {
    Stage::ALL.iter().any(|&stage| {
        std::fs::read(record_path(state, stage))
            .ok()
            .and_then(|text| serde_json::from_slice::<Record>(&text).ok())
            .is_some_and(|r| r.state == State::Failed)
    })
}

/// Every stage's record, in boot order, and the overall state.
pub fn snapshot(state: &StateDir) -> Result<(State, Vec<Record>), StateError> {
    if let Some(why) = switch::disabled_reason() {
        let records = Stage::ALL
            .iter()
            .map(|&s| Record {
                error: Some(why.clone()),
                ..Record::empty(s, State::Disabled)
            })
            .collect();
        return Ok((State::Disabled, records));
    }
    let records = Stage::ALL
        .iter()
        .map(|&s| read(state, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((overall(&records), records))
}

fn overall(records: &[Record]) -> State {
    if records.iter().any(|r| r.state == State::Failed) {
        State::Failed
    } else if records.iter().all(|r| r.state == State::Done) {
        State::Done
    } else if records.iter().any(|r| r.state == State::Running) {
        State::Running
    } else {
        State::Pending
    }
}

pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn since_boot_ms() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000)
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: Option<u32>, start: Option<u64>) -> bool {
    match pid {
        Some(pid) => {
            let now = process_start(pid);
            now.is_some() && (start.is_none() || now == start)
        }
        None => false,
    }
}

/// The records a notice carries: every stage's, in boot order, unreadable ones left out.
pub fn timings(state: &StateDir) -> Vec<Record> {
    Stage::ALL
        .iter()
        .filter_map(|&s| read(state, s).ok())
        .collect()
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failure_a_stage_wrote_counts_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(status_dir(&state)).unwrap();
        let write = |r: &Record| {
            std::fs::write(
                record_path(&state, Stage::S3Sync),
                serde_json::to_vec(r).unwrap(),
            )
            .unwrap()
        };
        // A running stage whose process this reader cannot see (gone, or hidden by
        // ProtectProc=invisible): `read` infers a failure, the watcher must not.
        write(&Record {
            pid: Some(u32::MAX - 1),
            ..Record::empty(Stage::S3Sync, State::Running)
        });
        assert_eq!(read(&state, Stage::S3Sync).unwrap().state, State::Failed);
        assert!(!failure_written(&state));
        write(&Record::empty(Stage::S3Sync, State::Failed));
        assert!(failure_written(&state));
    }

    #[test]
    fn units_name_their_stage() {
        assert_eq!(
            Stage::of_unit("bootstage-s3-sync.service"),
            Some(Stage::S3Sync)
        );
        assert_eq!(
            Stage::of_unit("bootstage-metadata.service"),
            Some(Stage::Metadata)
        );
        assert_eq!(
            Stage::of_unit("bootstage-hooks.service"),
            Some(Stage::Hooks)
        );
        assert_eq!(Stage::of_unit("myapp.service"), None);
        assert_eq!(Stage::of_unit("bootstage-failure@x.service"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_reused_pid_is_not() {
        let pid = std::process::id();
        let start = process_start(pid);
        assert!(start.is_some());
        assert!(alive(Some(pid), start));
        assert!(!alive(Some(pid), start.map(|s| s + 1)));
        assert!(!alive(None, None));
    }

    #[test]
    fn the_overall_state() {
        let r = |s| Record::empty(Stage::Hooks, s);
        use State::*;
        assert_eq!(overall(&[r(Done), r(Done), r(Done)]), Done);
        assert_eq!(overall(&[r(Done), r(Running), r(Pending)]), Running);
        assert_eq!(overall(&[r(Failed), r(Running), r(Pending)]), Failed);
        assert_eq!(overall(&[r(Pending), r(Pending), r(Pending)]), Pending);
    }
}
