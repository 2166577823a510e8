//! `bootstage.report` at the notices (`report` does the work): on a failure, the boot's
//! forensics to S3 after the notice and before ABANDON; on READY and on a failure, the
//! boot's metrics as one embedded metric format line on standard output (the journal).
//!
//! Where the settings come from: the parameters' `bootstage.report`, else the image's
//! `/etc/bootstage/report.json` (a boot whose metadata stage failed has no parameters).
//!
//! The failure unit's budget (`TimeoutStartSec=150`): the notice at most 60 s, then the
//! forensics at most [`FORENSICS_DEADLINE`] (20 s, finding the instance and the region
//! included), then ABANDON: finding the instance (IMDS, at most 10 s, when `instance.json`
//! is missing), loading the SDK (10 s), finding the group and hook (20 s) and the signals
//! (20 s): 60 + 20 + 60 = 140 s, inside 150. An upload that fails is logged, never
//! returned: the abandon goes on.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::aws::Aws;
use crate::base::retry::Deadline;
use crate::imds::facts::Facts;
use crate::orchestrator::GROUP_TAG;
use crate::report::{capture, emf, forensics};
use crate::settings::report::{Config, Logs};
use crate::stage::lifecycle;
use crate::stage::notice::{Event, Settings};
use crate::stage::tags;
use crate::state::StateDir;
use crate::state::status::{self, Stage, State};

pub const DEFAULT_CONFIG: &str = tags::REPORT_CONFIG;
pub const DEFAULT_JOURNALCTL: &str = "/usr/bin/journalctl";

/// Everything the forensics do, within the failure unit's budget (see above).
pub const FORENSICS_DEADLINE: Duration = Duration::from_secs(20);
/// `bootstage status --json`, run as a child for its exact output.
const STATUS_LIMIT: Duration = Duration::from_secs(5);
/// Each attempt of each PutObject.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The parameters' `bootstage.report`, else the image's file, else none (one reading,
/// shared with the status tags).
pub use crate::stage::tags::config;

/// The boot's metrics line, when `bootstage.report.metrics` is on: `TimeToReady` on READY
/// (from IMDS `pendingTime`), each stage's duration, `BootFailed`.
pub fn metrics(state: &StateDir, args: &Settings, config: &Config) {
    if !config.metrics {
        return;
    }
    let now = SystemTime::now();
    let facts = Facts::of(state);
    let failed = args.event == Event::Failure;
    let time_to_ready = match failed {
        true => None,
        false => tags::ready_time(facts.as_ref(), now),
    };
    if !failed && time_to_ready.is_none() {
        tracing::info!(
            "no TimeToReady: no pendingTime in instance.json, or this boot is not the launch's own (a reboot, a start out of a warm pool)"
        );
    }
    let stages = status::timings(state)
        .into_iter()
        .filter(|r| matches!(r.state, State::Done | State::Failed))
        .filter_map(|r| Some((r.stage, Duration::from_millis(r.duration_ms?))))
        .collect();
    let boot = emf::Boot {
        at: now,
        group: group(state, args, facts.as_ref()),
        time_to_ready,
        stages,
        failed,
    };
    // One line, one journal entry: the whole message is the document, as CloudWatch
    // Logs wants it.
    println!("{}", emf::document(&boot));
}

/// The group's name, for the dimension: what the orchestrator found, else the settings',
/// else the instance's `aws:autoscaling:groupName` tag.
fn group(state: &StateDir, args: &Settings, facts: Option<&Facts>) -> Option<String> {
    let recorded = crate::state::lifecycle::read(state)
        .ok()
        .flatten()
        .and_then(|r| r.group);
    let configured = || {
        lifecycle::config(state, &args.lifecycle.config)
            .ok()
            .flatten()
            .and_then(|c| c.asg)
            .and_then(|a| a.group)
    };
    let tagged = || {
        facts
            .and_then(|f| f.tags.as_ref())
            .and_then(|t| t.get(GROUP_TAG))
            .cloned()
    };
    recorded
        .or_else(configured)
        .or_else(tagged)
        .filter(|g| !g.is_empty() && g.len() <= 255)
}

/// A failed boot's forensics to `logs`' prefix, within [`FORENSICS_DEADLINE`]. Logs what
/// went, or why not; never fails.
pub async fn forensics(state: &StateDir, args: &Settings, logs: &Logs) {
    let deadline = Deadline::after(FORENSICS_DEADLINE);
    let work = gather_and_upload(state, args, logs, deadline);
    match tokio::time::timeout(deadline.remaining(), work).await {
        Ok(Ok((bucket, prefix, count))) => tracing::info!(
            "the failed boot's forensics are at s3://{bucket}/{prefix} ({count} objects)"
        ),
        Ok(Err(why)) => {
            tracing::error!("the failed boot's forensics were not uploaded: {why}")
        }
        Err(_) => tracing::error!(
            "the failed boot's forensics were not uploaded within {}",
            humantime::format_duration(FORENSICS_DEADLINE)
        ),
    }
}

async fn gather_and_upload(
    state: &StateDir,
    args: &Settings,
    logs: &Logs,
    deadline: Deadline,
) -> Result<(String, String, usize), String> {
    let mut units: Vec<String> = args.unit.iter().cloned().collect();
    units.extend(logs.units.iter().cloned());
    // Half the budget at most for the journal (a tenth to find its boot): the upload
    // needs the rest.
    let journal_boot = forensics::journal_boot(&args.journalctl, deadline.remaining() / 10).await;
    let argv = forensics::journal_command(
        &args.journalctl,
        journal_boot.as_deref(),
        &units,
        logs.lines,
    );
    let mut objects = Vec::new();
    match forensics::journal(&argv, logs.bytes, deadline.remaining() * 2 / 5).await {
        Ok(journal) => objects.push(journal),
        Err(e) => tracing::warn!("the journal's excerpt: {e}"),
    }
    match status_json(state).await {
        Ok(status) => objects.push(status),
        Err(e) => tracing::warn!("status --json: {e}"),
    }
    for stage in Stage::ALL {
        let path = status::status_dir(state).join(format!("{}.json", stage.name()));
        if let Ok(body) = std::fs::read(&path) {
            objects.push(forensics::Object {
                name: format!("records/{}.json", stage.name()),
                body,
                content_type: "application/json",
            });
        }
    }
    // instance.json, else IMDS: a boot whose metadata stage failed has none.
    let facts = lifecycle::whoami(state).await.ok();
    let instance_id = facts.as_ref().and_then(|f| f.instance_id.as_deref());
    // The excerpt's boot names the prefix; the kernel's when the journal named none.
    let boot_id = journal_boot
        .as_deref()
        .and_then(forensics::boot_id)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
        });
    let prefix = forensics::prefix(logs, instance_id, boot_id.as_deref());
    // The instance's AWS region: another cloud's region is none.
    let region = facts.and_then(|f| f.aws_region());
    let aws = Aws::load(region, &["S3"], ATTEMPT_TIMEOUT.min(deadline.remaining()))
        .await
        .map_err(|e| e.to_string())?;
    let count = forensics::upload(&aws, &logs.bucket, &prefix, &objects, deadline).await?;
    Ok((logs.bucket.clone(), prefix, count))
}

/// `bootstage status --json` of this state dir, as the operator would see it.
async fn status_json(state: &StateDir) -> Result<forensics::Object, String> {
    let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("--state-dir")
        .arg(state.root())
        .args(["status", "--json"]);
    let out = capture::tail(command, 1024 * 1024, STATUS_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(forensics::Object {
        name: "status.json".into(),
        body: out.bytes,
        content_type: "application/json",
    })
}
