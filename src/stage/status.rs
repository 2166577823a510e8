//! `bootstage status`: where the boot stands, from the stages' records (`state::status`).
//!
//! Exits 0 when every stage is done (or bootstage is disabled), 1 when a stage failed, 2
//! while one is pending or running. `--wait` watches the directory with inotify and returns
//! the moment the outcome is known (0 or 1); at its deadline it returns 1. What the
//! orchestrator was told, and a hold, follow the stages (`lifecycle/record.json`), then what
//! a running watcher listens to and whether it can (`watch.json`).

use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

use futures_util::StreamExt;

use crate::base::exit::ExitCode;
use crate::stage::error::{Error, Result};
use crate::stage::{lifecycle, s3sync};
use crate::state::StateDir;
use crate::state::status::{Record, Stage, State, snapshot, status_dir};

/// `bootstage status [--wait [--timeout]] [--json]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub wait: bool,
    /// With `wait`: give up after this long.
    pub timeout: Duration,
    pub json: bool,
    /// Where the image's lifecycle settings are, to tell a hook no watcher keeps alive.
    pub lifecycle: lifecycle::Settings,
}

pub const DEFAULT_WAIT_TIMEOUT: &str = "15m";

/// Why the records are root's, for whoever meets them as another user.
const RECORDS_ARE_ROOTS: &str = "the stages' records are root's (0600), in the state dir \
     beside the parameters and the credentials of secrets";

/// `bootstage status [--wait] [--json]`.
pub async fn run(state: &StateDir, args: &Settings) -> Result<ExitCode> {
    report(state, args)
        .await
        .map_err(|e| e.as_other_user("status", RECORDS_ARE_ROOTS))
}

async fn report(state: &StateDir, args: &Settings) -> Result<ExitCode> {
    let (mut overall, mut records) = snapshot(state)?;
    if args.wait && !decided(overall) {
        let waited = wait(state, args.timeout).await?;
        (overall, records) = waited;
    }
    let orchestrator = crate::state::lifecycle::read(state).ok().flatten();
    let watching = crate::state::watch::read(state);
    // Settings that only a unit the image lacks would act on.
    let s3sync_done = records
        .iter()
        .any(|r| r.stage == Stage::S3Sync.name() && r.state == State::Done);
    let mut warnings: Vec<&str> = Vec::new();
    if watching.is_none() && s3sync_done && s3sync::wants_watch(state) {
        warnings.push(s3sync::UNWATCHED);
    }
    if overall == State::Done && lifecycle::unwatched(state, &args.lifecycle) {
        warnings.push(lifecycle::UNWATCHED);
    }
    let text = if args.json {
        let mut doc = serde_json::json!({"state": overall, "stages": records});
        if let Some(record) = &orchestrator {
            doc["lifecycle"] = serde_json::to_value(record).expect("records serialize");
        }
        if let Some(watch) = &watching {
            doc["watch"] = serde_json::to_value(watch).expect("records serialize");
        }
        if !warnings.is_empty() {
            doc["warnings"] = serde_json::json!(warnings);
        }
        let mut text = serde_json::to_string_pretty(&doc).expect("records serialize");
        text.push('\n');
        text
    } else {
        let mut text = table(overall, &records);
        for line in orchestrator.iter().flat_map(lifecycle::describe) {
            text += &format!("lifecycle: {line}\n");
        }
        if let Some(watch) = &watching {
            text += &format!("watch: {}\n", watch.describe());
        }
        for warning in &warnings {
            text += &format!("warning: {warning}\n");
        }
        text
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
            // An error of several lines (one per cause) keeps the column.
            let error = error.replace('\n', "\n          ");
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
