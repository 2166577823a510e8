//! Where a boot stands: each stage's record in `<state dir>/status/<stage>.json`, and the
//! `bootstage status` command that reads them.
//!
//! A stage writes its record when it starts (`running`, with its pid) and when it ends
//! (`done`, or `failed` with the error and exit code), always through the atomic writer,
//! and before it tells systemd READY, so the next unit never sees a stale record. No record
//! is `pending`. A `running` record whose process is gone (killed, or the machine cut its
//! unit short) reads as `failed`: the pid's start time is kept with it so a reused pid is
//! not mistaken for the stage. Records live in the state dir (a tmpfs under systemd), so
//! each boot starts with none.
//!
//! `status` exits 0 when every stage is done (or bootstage is disabled), 1 when a stage
//! failed, 2 while one is pending or running. `--wait` watches the directory with inotify
//! and returns the moment the outcome is known (0 or 1); at its deadline it returns 1.

use std::fmt::Write as _;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cli::StatusArgs;
use crate::error::{Error, ExitCode, Result};
use crate::stage::launch;
use crate::state::StateDir;
use crate::state::atomic;

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

fn status_dir(state: &StateDir) -> PathBuf {
    state.root().join("status")
}

fn record_path(state: &StateDir, stage: Stage) -> PathBuf {
    status_dir(state).join(format!("{}.json", stage.name()))
}

/// Runs one stage's work between its `running` and its `done`/`failed` record. Writing a
/// record is best effort: a report that cannot be written must not fail the boot.
pub async fn track<T>(
    state: &StateDir,
    stage: Stage,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
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
pub fn read(state: &StateDir, stage: Stage) -> Result<Record> {
    let path = record_path(state, stage);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        // No record (or no state dir yet): the stage has not started. A reader without
        // permission gets PermissionDenied here, never a guess.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Record::empty(stage, State::Pending));
        }
        Err(source) => return Err(Error::Read { path, source }),
    };
    let mut record: Record = serde_json::from_slice(&text).map_err(|e| Error::Read {
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

/// Every stage's record, in boot order, and the overall state.
pub fn snapshot(state: &StateDir) -> Result<(State, Vec<Record>)> {
    if let Some(why) = launch::disabled_reason() {
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
        .collect::<Result<Vec<_>>>()?;
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

/// `bootstage status [--wait] [--json]`.
pub async fn run(state: &StateDir, args: &StatusArgs) -> Result<ExitCode> {
    let (mut overall, mut records) = snapshot(state)?;
    if args.wait && !decided(overall) {
        let waited = wait(state, args.timeout).await?;
        (overall, records) = waited;
    }
    let text = if args.json {
        let doc = serde_json::json!({"state": overall, "stages": records});
        let mut text = serde_json::to_string_pretty(&doc).expect("records serialize");
        text.push('\n');
        text
    } else {
        table(overall, &records)
    };
    print!("{text}");
    Ok(match overall {
        State::Done | State::Disabled => ExitCode::Ok,
        State::Failed => ExitCode::Failed,
        State::Running | State::Pending if args.wait => {
            tracing::error!(
                "no outcome after {}: a stage is still pending or running",
                humantime::format_duration(args.timeout)
            );
            ExitCode::Failed
        }
        State::Running | State::Pending => ExitCode::StillRunning,
    })
}

fn decided(state: State) -> bool {
    matches!(state, State::Done | State::Failed | State::Disabled)
}

/// Re-reads the records on every change in the status dir (inotify), and once a second
/// for a stage process that vanished without a word, until decided or the deadline.
async fn wait(state: &StateDir, timeout: Duration) -> Result<(State, Vec<Record>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let dir = status_dir(state);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(Error::write(&dir))?;
    let watch_error = |source| Error::Read {
        path: dir.clone(),
        source,
    };
    let inotify = inotify::Inotify::init().map_err(watch_error)?;
    inotify
        .watches()
        .add(
            &dir,
            inotify::WatchMask::MOVED_TO | inotify::WatchMask::CLOSE_WRITE,
        )
        .map_err(watch_error)?;
    let mut events = inotify
        .into_event_stream([0u8; 4096])
        .map_err(watch_error)?;
    loop {
        // Read after arming the watch, so a change between the two is never missed.
        let snapshot = snapshot(state)?;
        if decided(snapshot.0) {
            return Ok(snapshot);
        }
        tokio::select! {
            _ = events.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(snapshot),
        }
    }
}

fn table(overall: State, records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        let state = serde_json::to_value(r.state).expect("states serialize");
        let state = state.as_str().unwrap_or_default();
        let timing = match (r.duration_ms, r.started_after_boot_ms) {
            (Some(d), Some(b)) => format!("{:.2} s, from {:.2} s after boot", secs(d), secs(b)),
            (Some(d), None) => format!("{:.2} s", secs(d)),
            (None, Some(b)) => format!("since {:.2} s after boot", secs(b)),
            (None, None) => String::new(),
        };
        let _ = write!(out, "{:<9} {:<9} {timing}", r.stage, state);
        if let Some(error) = &r.error {
            match r.exit_code {
                Some(code) => {
                    let _ = write!(out, "\n          exit {code}: {error}");
                }
                None => {
                    let _ = write!(out, "\n          {error}");
                }
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    let overall = serde_json::to_value(overall).expect("states serialize");
    let _ = writeln!(out, "bootstage: {}", overall.as_str().unwrap_or_default());
    out
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
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
