//! `bootstage notify failure|ready`: tell someone how a boot went.
//!
//! `bootstage-failure@.service` runs `notify failure --unit %i` when a stage (or an app that
//! names it in `OnFailure=`) fails; `bootstage-ready.service` runs `notify ready` once
//! `bootstage.target` is reached. The notice is one JSON object:
//! `{"event", "time", "hostname", "boot_id", "unit", "stage", "error", "exit_code",
//! "instance": <instance.json or null>, "timings": [<status records>]}`.
//!
//! Where it goes comes from the parameters' `bootstage.notify`:
//! `{"url": "https://…", "headers": {…}, "command": "…", "ready": true, "timeout": "30s"}`,
//! else from `/etc/bootstage/notify.json` (baked into the image, so a boot whose metadata
//! stage failed, and so has no parameters, is still heard of). `url` gets the notice as an
//! HTTP POST (any 2xx is delivered; 429, 5xx and network errors are retried with backoff
//! until `timeout`, default 30 s, at most 60 s; other 4xx are final). `command` runs with `/bin/sh -c`,
//! the notice on its stdin, at the same time as the POST, each with the whole timeout. The ready notice is sent only
//! when `ready` is true. Header values are never logged. Delivery failure is logged and
//! exits 75; it never blocks the boot: both units run beside the chain, not in it.
//! A stage that never ran (systemd fails it, and triggers its `OnFailure=`, when an
//! earlier stage failed) sends no notice of its own: one root failure, one notice.
//! The orchestrator is told too (`stage::lifecycle`): CONTINUE and SUCCESS beside the
//! ready notice, ABANDON and FAILURE (or a hold) after a failure notice; the failure
//! notice carries the hold, if one was decided.
//!
//! With `bootstage.report` (`notice::report`): a failure's forensics go to S3 after the
//! notice and before ABANDON (bounded; a failed upload is logged and the abandon goes
//! on), and both notices write the boot's metrics as one embedded metric format line.
//! With `bootstage.report.tags`, the instance's status tag (`stage::tags`) is written
//! beside each notice: `ready`, or `failed` (`held` when a hold was decided) before ABANDON.
//!
//! Delivery (the JSON, the POST, the command) is `notice::deliver`, which the lifecycle
//! watcher also uses for the notices of the instance's later life: `"event": "drain"`
//! (with `"drain": {"reason", "deadline", …}`), `"rebalance"`, `"maintenance"`, and a
//! failed drain's failure notice (`"stage": "drain"`).

pub mod deliver;
pub mod report;

use std::path::PathBuf;

use crate::report::tags::Status;
use crate::stage::error::Result;
use crate::stage::in_service;
use crate::stage::lifecycle;
use crate::stage::tags;
use crate::state::StateDir;
use crate::state::status::{self, Stage, State};

pub use deliver::{DEFAULT_CONFIG, DEFAULT_TIMEOUT, MAX_TIMEOUT, Notice, NoticeError};

/// `bootstage notify failure|ready [--unit UNIT]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub event: Event,
    /// The unit the notice is about.
    pub unit: Option<String>,
    /// The image's notice settings, used when the parameters have none.
    pub config: PathBuf,
    /// Where the orchestrator is told, after the notice.
    pub lifecycle: lifecycle::Settings,
    /// The image's report settings, used when the parameters have none.
    pub report_config: PathBuf,
    /// The journalctl a failed boot's journal is read with.
    pub journalctl: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A unit failed (run from OnFailure=).
    Failure,
    /// bootstage.target was reached.
    Ready,
}

/// The unit of `bootstage in-service`.
const IN_SERVICE_UNIT: &str = "bootstage-in-service.service";

pub async fn run(state: &StateDir, args: &Settings) -> Result<()> {
    // systemd triggers OnFailure= also for the later stages whose start failed because an
    // earlier one did; those never ran (no record). The earlier stage's notice is the one
    // that names the cause: one failure, one notice (and one ABANDON). A stage that failed
    // before writing its first record for a reason of its own (a bad setting, a missing
    // binary, a namespace failure at start) is heard of: only an earlier failed stage
    // silences it.
    if args.event == Event::Failure
        && let Some(stage) = args.unit.as_deref().and_then(Stage::of_unit)
        && status::read(state, stage).is_ok_and(|r| r.state == State::Pending)
        && let Some(earlier) = Stage::ALL
            .iter()
            .take_while(|s| **s != stage)
            .find(|s| status::read(state, **s).is_ok_and(|r| r.state == State::Failed))
    {
        tracing::info!(%stage, earlier = %earlier, "the stage never ran because an earlier one failed: no notice of its own");
        return Ok(());
    }
    // The same for the unit of going into service, which requires them all.
    if args.event == Event::Failure
        && args.unit.as_deref() == Some(IN_SERVICE_UNIT)
        && in_service::read(state).is_none()
        && status::failure_written(state)
    {
        tracing::info!("{IN_SERVICE_UNIT} never ran because a stage failed: no notice of its own");
        return Ok(());
    }
    let mut notice = compose(state, args);
    let report = report::config(state, &args.report_config);
    if let Some(report) = &report {
        report::metrics(state, args, report);
    }
    match args.event {
        // The notice first, then the orchestrator: whoever reads the notice learns why
        // before the group replaces the instance. A hold is decided before the notice, so
        // the notice says how long the instance is kept and how to release it.
        Event::Failure => {
            let reason = notice
                .error
                .clone()
                .unwrap_or_else(|| "a unit failed".into());
            let after = lifecycle::failure(state, &args.lifecycle, &reason).await;
            notice.lifecycle = crate::state::lifecycle::read(state).ok().flatten();
            // The status tag beside the notice (its own short bound), before ABANDON.
            let held = notice.lifecycle.as_ref().is_some_and(|r| r.hold.is_some());
            let status = if held { Status::Held } else { Status::Failed };
            let (sent, ()) = tokio::join!(
                send(state, args, &notice),
                tags::publish(state, &args.report_config, status, None)
            );
            // The forensics before the instance goes: within their own deadline, never
            // an error of their own.
            if let Some(logs) = report.as_ref().and_then(|r| r.logs.as_ref()) {
                report::forensics(state, args, logs).await;
            }
            let told = match after {
                Ok(Some(abandon)) => abandon.send(state).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            both(sent, told)
        }
        // At once: a webhook that is down must not keep the instance out of service.
        Event::Ready => {
            if lifecycle::unwatched(state, &args.lifecycle) {
                tracing::warn!("{}", lifecycle::UNWATCHED);
            }
            let ready = tags::ready_time(
                crate::imds::facts::Facts::of(state).as_ref(),
                std::time::SystemTime::now(),
            );
            let (sent, told, ()) = tokio::join!(
                send(state, args, &notice),
                lifecycle::ready(state, &args.lifecycle, false),
                tags::publish(state, &args.report_config, Status::Ready, ready)
            );
            both(sent, told)
        }
    }
}

/// The first error of two steps that both had to run; the second is logged.
fn both(first: Result<()>, second: Result<()>) -> Result<()> {
    match (first, second) {
        (Err(e), Err(also)) => {
            tracing::error!("{also}");
            Err(e)
        }
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

fn compose(state: &StateDir, args: &Settings) -> Notice {
    let stage = args.unit.as_deref().and_then(Stage::of_unit);
    let record = stage.and_then(|s| status::read(state, s).ok());
    let (event, error) = match args.event {
        Event::Failure => (
            "failure",
            record.as_ref().and_then(|r| r.error.clone()).or_else(|| {
                args.unit.as_ref().map(|u| match stage {
                    Some(_) => format!(
                        "{u} failed before it wrote a status record (a bad setting, a missing binary, or a failure at start); see journalctl -u {u}"
                    ),
                    None => format!("{u} failed; see journalctl -u {u}"),
                })
            }),
        ),
        Event::Ready => ("ready", None),
    };
    Notice {
        unit: args.unit.clone(),
        stage: stage.map(Stage::name),
        error,
        exit_code: record.and_then(|r| r.exit_code),
        ..Notice::new(state, event)
    }
}

/// Sends the notice where `bootstage.notify` (or the image's file) says.
async fn send(state: &StateDir, args: &Settings, notice: &Notice) -> Result<()> {
    let Some(config) = deliver::config(state, &args.config)? else {
        tracing::info!(
            "no bootstage.notify and no {}: nothing to send",
            args.config.display()
        );
        return Ok(());
    };
    if args.event == Event::Ready && !config.ready {
        tracing::info!("bootstage.notify.ready is off: no ready notice");
        return Ok(());
    }
    deliver::send(&config, notice).await
}
