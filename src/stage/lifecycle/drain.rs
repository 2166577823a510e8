//! The instance's later life, acted on (`life.rs` decides, `sources.rs` brings the looks,
//! `leaving.rs` completes the termination action): once the launch is behind it, the
//! lifecycle watcher looks at IMDS's four paths every 5 s with one IMDSv2 token (on
//! Compute Engine and Azure, at what their metadata services say: `sources.rs`) and
//! - runs `maintenance.d` once per event, `rebalance.d` once per rebalance episode and
//!   `rebalance-undo.d` when no interruption followed, one directory at a time, each run
//!   in the background so the looks go on (a drain cuts a run short);
//! - drains once: `drain.d` with `BOOTSTAGE_DRAIN_REASON` and `BOOTSTAGE_DRAIN_DEADLINE`,
//!   then `systemctl stop` of each unit `drain.stop` names, in order (each waits for its
//!   unit's own `TimeoutStopSec=`), all by the drain's deadline;
//! - beside the drain, asks the group where it has the instance, heartbeats the
//!   termination hook once it waits in `Terminating:Wait`, and after the drain completes
//!   it with one CONTINUE ("No active Lifecycle Action" is done too). A drain that fails
//!   or overruns is logged, noticed (`"stage": "drain"`), and the action still completed.
//!
//! Each step is written to `lifecycle/record.json` as it is decided, so a watcher that
//! restarts acts on nothing twice: a drain that was begun is never begun again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::leaving::Leaving;
use super::life::{self, Act, Event, Memory, Plan};
use super::sources::{self, Source, Unread};
use super::{cloud, now};
use crate::base::child;
use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::base::stop::Stop;
use crate::imds::azure;
use crate::imds::provider::Provider;
use crate::orchestrator::Config;
use crate::report::tags::Status;
use crate::stage::error::Result;
use crate::stage::hooks::{self, HookDirs, Kind};
use crate::stage::notice::deliver;
use crate::stage::tags;
use crate::state::StateDir;
use crate::state::lifecycle::{self, Drain, Record};

/// How often IMDS is asked (four GETs: 0.8 requests a second), as AWS's examples do.
pub const DEFAULT_POLL: &str = "5s";
/// Where `systemctl` is.
pub const DEFAULT_SYSTEMCTL: &str = "/usr/bin/systemctl";
/// A stop queued past the deadline: systemd answers at once.
const QUEUE_STOP: Duration = Duration::from_secs(5);
/// The last notices may take this long to go out before the watcher exits.
const NOTICES_AT_EXIT: Duration = Duration::from_secs(65);
/// The commands a drain runs get this `PATH`, nothing of the watcher's environment.
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The hook directories of the instance's later life.
const LIFE_KINDS: [Kind; 4] = [
    Kind::Drain,
    Kind::Rebalance,
    Kind::RebalanceUndo,
    Kind::Maintenance,
];

/// What the watch of the instance's life needs beside the lifecycle settings.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Where `drain.d/`, `rebalance.d/` … are, and how long a rebalance or maintenance
    /// run may take (`hook_timeout`; a drain has its own deadline).
    pub dirs: HookDirs,
    /// IMDS (else the SDKs' variables, else 169.254.169.254).
    pub imds_endpoint: Option<String>,
    /// Between two looks at IMDS ([`DEFAULT_POLL`]).
    pub poll_every: Duration,
    /// The `systemctl` that stops units ([`DEFAULT_SYSTEMCTL`]).
    pub systemctl: PathBuf,
    /// The image's notice settings, when the parameters have none.
    pub notify_config: PathBuf,
}

/// Whether the instance's life needs watching: a termination hook or drain settings, or a
/// hook in one of the later life's directories.
pub fn watched(config: Option<&Config>, dirs: &HookDirs) -> bool {
    // What counts as a hook is the hooks stage's rule (an executable file, no editor or
    // package leftovers): a README in drain.d keeps nothing polling.
    let has_hooks = |kind: Kind| {
        hooks::list(&dirs.hooks_dir.join(kind.dir())).is_ok_and(|hooks| !hooks.is_empty())
    };
    config.is_some_and(Config::watches_leaving) || LIFE_KINDS.into_iter().any(has_hooks)
}

/// Watches the instance's life until it drains and leaves, or SIGTERM.
pub async fn watch(
    state: &StateDir,
    config: Option<Config>,
    w: &Watch,
    notifier: Notifier,
    stop: &mut Stop,
) -> Result<()> {
    let settings = config.as_ref().map(Config::drain).unwrap_or_default();
    let mut notices = tokio::task::JoinSet::new();
    let record = lifecycle::read(state)?.unwrap_or_default();
    if let Some(begun) = record.drain.clone() {
        return resume(state, config.as_ref(), w, &record, begun, notifier, stop).await;
    }
    let Some(mut source) = Source::open(state, w, notifier)? else {
        return Ok(());
    };
    notifier.status("watching the instance's life");
    let mut ticker = tokio::time::interval(source.every(w.poll_every));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runs = Runs::default();
    let mut unread = Unread::default();
    // Azure: the events this watcher approved, should the record not have taken them.
    let mut approved = Vec::new();
    // GCP: the maintenance-event value this watcher saw last.
    let mut host_before = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = source.changed() => {}
            _ = stop.requested() => {
                tracing::info!("stopping the watch of the instance's life");
                runs.cut("the watcher is stopping");
                return Ok(());
            }
        }
        let look = source.look(&mut unread).await;
        // A hook run that ended frees its event for the approval.
        runs.step(state, &w.dirs, notifier).await;
        let record = lifecycle::read(state).ok().flatten().unwrap_or_default();
        let now_unix = life::unix(SystemTime::now());
        let mut memory = Memory {
            host_before: host_before.clone(),
            busy: runs.busy(),
            ..memory(&record)
        };
        memory.approved.extend(approved.iter().cloned());
        if let Some(host) = &look.host_maintenance {
            host_before = Some(host.value.clone());
        }
        for act in life::next(&memory, &look, now_unix, &settings) {
            match act {
                Act::Drain(plan) => {
                    runs.cut("the instance drains");
                    // The long polls end: nothing more is looked at.
                    let approver = source.approver();
                    drop(source);
                    drain(
                        state,
                        config.as_ref(),
                        w,
                        plan,
                        approver,
                        notifier,
                        stop,
                        &mut notices,
                    )
                    .await?;
                    let _ = tokio::time::timeout(NOTICES_AT_EXIT, notices.join_all()).await;
                    return Ok(());
                }
                Act::Maintenance(event) => maintenance(state, w, &mut notices, &mut runs, event)?,
                Act::Approve(event) => {
                    if source.approve(state, &event.id, &mut unread).await {
                        lifecycle::remember(&mut approved, &event.id);
                    }
                }
                Act::Rebalance {
                    notice,
                    hooks,
                    undo_due,
                } => rebalance(state, w, &mut notices, &mut runs, notice, hooks, undo_due)?,
                Act::Undo => undo(state, w, &record, &mut notices, &mut runs)?,
            }
        }
        runs.step(state, &w.dirs, notifier).await;
        // Delivered notices are done with; their errors were logged.
        while notices.try_join_next().is_some() {}
    }
}

/// A restarted watcher whose drain was begun: the drain is never run twice; what is left
/// is the leaving (and on Azure, the drain's event approved if it was not).
async fn resume(
    state: &StateDir,
    config: Option<&Config>,
    w: &Watch,
    record: &Record,
    begun: Drain,
    notifier: Notifier,
    stop: &mut Stop,
) -> Result<()> {
    if lifecycle::settled(&record.termination) {
        tracing::info!("this instance has drained and its termination action is complete");
        notifier.status("drained");
        return Ok(());
    }
    if begun.done.is_none() {
        let why = "the watcher restarted during the drain; a drain is not run twice";
        tracing::warn!("{why}");
        lifecycle::update(state, |r| {
            if let Some(d) = r.drain.as_mut() {
                d.done = Some(now());
                d.error.get_or_insert_with(|| why.into());
            }
        })?;
    }
    if let Some(id) = begun.approve.filter(|id| !record.approved.contains(id)) {
        sources::approve_once(state, w, &id, stop).await;
    }
    let mut leaving = Leaving::new(state, config, begun.deadline_unix);
    leaving.finish(state, stop).await;
    Ok(())
}

/// A scheduled maintenance event: recorded (once each), noticed, and `maintenance.d`
/// queued for it.
fn maintenance(
    state: &StateDir,
    w: &Watch,
    notices: &mut tokio::task::JoinSet<()>,
    runs: &mut Runs,
    event: Event,
) -> Result<()> {
    tracing::info!(
        event = event.id,
        code = event.code,
        not_before = event.not_before,
        "scheduled maintenance: running maintenance.d"
    );
    lifecycle::update(state, |r| {
        lifecycle::remember(&mut r.maintenance, &event.id)
    })?;
    notify(notices, state, w, "maintenance", event.raw.clone(), None);
    runs.queue(Kind::Maintenance, life::event_env(&event), event.id.clone());
    Ok(())
}

/// A rebalance recommendation: recorded with its undo's new time; when it opens an
/// episode (`hooks`), noticed and `rebalance.d` queued.
fn rebalance(
    state: &StateDir,
    w: &Watch,
    notices: &mut tokio::task::JoinSet<()>,
    runs: &mut Runs,
    notice: String,
    hooks: bool,
    undo_due: u64,
) -> Result<()> {
    lifecycle::update(state, |r| {
        lifecycle::remember(&mut r.rebalance.notices, &notice);
        r.rebalance.undo_due_unix = Some(undo_due);
        r.rebalance.hooks_ran += u32::from(hooks);
    })?;
    let undo_at = life::rfc3339(undo_due);
    if hooks {
        tracing::warn!(
            notice_time = notice,
            "rebalance recommendation: running rebalance.d (rebalance-undo.d at {undo_at} unless interrupted)"
        );
        let about = json!({"notice_time": notice, "undo_at": undo_at});
        notify(notices, state, w, "rebalance", about, None);
        let env = vec![("BOOTSTAGE_REBALANCE_NOTICE_TIME".into(), notice)];
        runs.queue(Kind::Rebalance, env, "rebalance".into());
    } else {
        tracing::info!(
            notice_time = notice,
            "another rebalance recommendation: rebalance.d already ran; the undo moves to {undo_at}"
        );
    }
    Ok(())
}

/// No interruption followed the rebalance recommendation: recorded, noticed, and
/// `rebalance-undo.d` queued.
fn undo(
    state: &StateDir,
    w: &Watch,
    record: &Record,
    notices: &mut tokio::task::JoinSet<()>,
    runs: &mut Runs,
) -> Result<()> {
    let last = record.rebalance.notices.last().cloned().unwrap_or_default();
    tracing::info!(
        "no interruption followed the rebalance recommendation: running rebalance-undo.d"
    );
    lifecycle::update(state, |r| {
        r.rebalance.undo_due_unix = None;
        r.rebalance.undone += 1;
    })?;
    let about = json!({"notice_time": last, "undo": true});
    notify(notices, state, w, "rebalance", about, None);
    let env = vec![("BOOTSTAGE_REBALANCE_NOTICE_TIME".into(), last)];
    runs.queue(Kind::RebalanceUndo, env, "rebalance-undo".into());
    Ok(())
}

/// The lines `status` prints for the instance's later life: a drain in progress and its
/// deadline, or how it ended; the rebalance recommendations and maintenance events.
pub fn describe(record: &Record) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(d) = &record.drain {
        lines.push(match &d.done {
            None => format!(
                "draining ({}: {}) until {}, since {}",
                d.reason, d.why, d.deadline, d.started
            ),
            Some(done) => format!(
                "drained ({}: {}) from {} to {} (deadline {}){}",
                d.reason,
                d.why,
                d.started,
                done,
                d.deadline,
                d.error
                    .as_deref()
                    .map(|e| format!("; FAILED: {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    let r = &record.rebalance;
    if !r.is_empty() {
        lines.push(format!(
            "rebalance: {} recommendation(s) seen, rebalance.d ran {} time(s), rebalance-undo.d {} time(s){}",
            r.notices.len(),
            r.hooks_ran,
            r.undone,
            r.undo_due_unix
                .map(|t| format!("; undo due at {}", life::rfc3339(t)))
                .unwrap_or_default()
        ));
    }
    if !record.maintenance.is_empty() {
        lines.push(format!(
            "maintenance: maintenance.d ran for {}",
            record.maintenance.join(", ")
        ));
    }
    if !record.approved.is_empty() {
        lines.push(format!(
            "scheduled events approved: {}",
            record.approved.join(", ")
        ));
    }
    lines
}

/// What the record says was acted on.
fn memory(record: &Record) -> Memory {
    Memory {
        draining: record.drain.is_some(),
        rebalance_seen: record.rebalance.notices.clone(),
        undo_due: record.rebalance.undo_due_unix,
        maintenance_done: record.maintenance.clone(),
        maintenance_ran: record.maintenance_ran.clone(),
        host_before: None,
        approved: record.approved.clone(),
        busy: Vec::new(),
    }
}

/// Sends a notice of the instance's life in the background.
fn notify(
    notices: &mut tokio::task::JoinSet<()>,
    state: &StateDir,
    w: &Watch,
    event: &'static str,
    about: serde_json::Value,
    failed: Option<(&'static str, String)>,
) {
    let (state, fallback) = (state.clone(), w.notify_config.clone());
    notices.spawn(async move {
        if let Err(e) = deliver::life(&state, &fallback, event, about, failed).await {
            tracing::error!("the {event} notice: {e}");
        }
    });
}

/// A hook run in the background: what it is for, and its task (hooks ran, skipped).
/// (what it is for, in the log; its key, as queued; its task)
type Running = (
    String,
    String,
    tokio::task::JoinHandle<Result<(usize, usize)>>,
);
/// A hook run waiting its turn: its directory, its variables, what it is for.
type Queued = (Kind, Vec<(String, String)>, String);

/// The rebalance, undo and maintenance hook runs: one at a time (they share the state
/// dir's lock), each in the background, the rest queued.
#[derive(Default)]
struct Runs {
    running: Option<Running>,
    queued: VecDeque<Queued>,
}

impl Runs {
    /// What the runs queued or running are for (a maintenance run: its event's id).
    fn busy(&self) -> Vec<String> {
        let running = self.running.as_ref().map(|(_, key, _)| key.clone());
        running
            .into_iter()
            .chain(self.queued.iter().map(|(_, _, key)| key.clone()))
            .collect()
    }
}

impl Runs {
    fn queue(&mut self, kind: Kind, env: Vec<(String, String)>, what: String) {
        self.queued.push_back((kind, env, what));
    }

    /// Collects a run that ended, and starts the next.
    async fn step(&mut self, state: &StateDir, dirs: &HookDirs, notifier: Notifier) {
        if let Some((what, key, run)) = self.running.take_if(|(_, _, run)| run.is_finished()) {
            match run.await {
                Ok(Ok((ran, _))) => tracing::info!("{what}: {ran} hook(s) ran"),
                Ok(Err(e)) => tracing::error!("{what}: {e}"),
                Err(e) => tracing::error!("{what}: {e}"),
            }
            // A maintenance event's run ended: it may be approved now, and after a
            // restart too (one cut by the watcher stopping never gets here).
            let ended = lifecycle::update(state, |r| {
                if r.maintenance.contains(&key) && !r.maintenance_ran.contains(&key) {
                    lifecycle::remember(&mut r.maintenance_ran, &key);
                }
            });
            if let Err(e) = ended {
                tracing::error!("{what}: recording that it ended: {e}");
            }
        }
        if self.running.is_some() {
            return;
        }
        let Some((kind, env, what)) = self.queued.pop_front() else {
            return;
        };
        let (state, dirs) = (state.clone(), dirs.clone());
        let key = what.clone();
        let what = format!("{} ({what})", kind.dir());
        let run = tokio::spawn(async move {
            let limit = format!(
                "{} (--hook-timeout)",
                humantime::format_duration(dirs.hook_timeout)
            );
            let deadline = Deadline::after(dirs.hook_timeout);
            hooks::run_kinds(&state, &dirs, &[kind], &env, deadline, &limit, notifier).await
        });
        self.running = Some((what, key, run));
    }

    /// Ends a run in progress (its hook is killed) and forgets the queue.
    fn cut(&mut self, why: &str) {
        if let Some((what, _, run)) = self.running.take()
            && !run.is_finished()
        {
            tracing::warn!("{why}: {what} cut short");
            run.abort();
        }
        for (_, _, what) in self.queued.drain(..) {
            tracing::warn!("{why}: {what} not run");
        }
    }
}

/// The drain, begun once: recorded, noticed, run beside the termination action, which
/// is completed after it.
#[allow(clippy::too_many_arguments)]
async fn drain(
    state: &StateDir,
    config: Option<&Config>,
    w: &Watch,
    plan: Plan,
    approver: Option<std::sync::Arc<azure::Client>>,
    notifier: Notifier,
    stop: &mut Stop,
    notices: &mut tokio::task::JoinSet<()>,
) -> Result<()> {
    let reason = plan.reason.name();
    let deadline_text = life::rfc3339(plan.deadline_unix);
    let configured = config.map(Config::drain).unwrap_or_default().stop;
    let units = units_to_stop(&configured, &plan.env);
    if units.len() < configured.len() {
        tracing::info!("a Spot hibernation resumes this boot: {configured:?} not stopped");
    }
    lifecycle::update(state, |r| {
        r.drain = Some(Drain {
            reason: reason.into(),
            why: plan.why.clone(),
            started: now(),
            deadline: deadline_text.clone(),
            deadline_unix: plan.deadline_unix,
            approve: plan.approve.clone(),
            ..Drain::default()
        })
    })?;
    tracing::warn!(
        reason,
        deadline = deadline_text,
        "draining: {}; drain.d, then stopping {units:?}",
        plan.why
    );
    notifier.status(&format!("draining ({reason}) until {deadline_text}"));
    let about =
        json!({"reason": reason, "why": plan.why, "deadline": deadline_text, "stop": units});
    notify(notices, state, w, "drain", about.clone(), None);
    // Status tags are EC2's: not elsewhere.
    if cloud(state) == Provider::Aws {
        let tagging = state.clone();
        notices.spawn(async move {
            let fallback = std::path::Path::new(tags::REPORT_CONFIG);
            tags::publish(&tagging, fallback, Status::Draining, None).await
        });
    }
    let left = Duration::from_secs(
        plan.deadline_unix
            .saturating_sub(life::unix(SystemTime::now())),
    );
    let deadline = Deadline::after(left);
    let mut env = vec![
        ("BOOTSTAGE_DRAIN_REASON".to_string(), reason.to_string()),
        (
            "BOOTSTAGE_DRAIN_DEADLINE".to_string(),
            deadline_text.clone(),
        ),
    ];
    env.extend(plan.env.iter().cloned());
    let work = tokio::spawn(run_drain(
        state.clone(),
        w.dirs.clone(),
        w.systemctl.clone(),
        units,
        env,
        deadline,
        deadline_text,
        notifier,
    ));
    tokio::pin!(work);
    let mut leaving = Leaving::new(state, config, plan.deadline_unix);
    let mut next_look = tokio::time::Instant::now();
    let (stopped, error) = loop {
        tokio::select! {
            ended = &mut work => break ended.unwrap_or_else(|e| (Vec::new(), Some(e.to_string()))),
            _ = tokio::time::sleep_until(next_look) => {
                leaving.look(state, false).await;
                next_look = tokio::time::Instant::now() + leaving.between_looks();
            }
            _ = stop.requested() => {
                tracing::warn!("stopping during the drain: the termination action is left to the group's timeout");
                return Ok(());
            }
        }
    };
    drained(state, w, reason, about, stopped, error, notices)?;
    // Azure: the drain's event approved, so the eviction or deletion may go ahead early.
    if let (Some(id), Some(client)) = (&plan.approve, &approver) {
        sources::approve_within(state, client, id, stop).await;
    }
    notifier.status("drained: completing the termination action");
    leaving.finish(state, stop).await;
    Ok(())
}

/// The units a drain stops: those configured, but none for a Spot hibernation, which
/// resumes this same boot (nothing would start a stopped app again; drain.d still runs
/// to checkpoint or deregister, and the app sleeps with the instance).
fn units_to_stop(configured: &[String], env: &[(String, String)]) -> Vec<String> {
    match env
        .iter()
        .any(|(k, v)| k == "BOOTSTAGE_SPOT_ACTION" && v == "hibernate")
    {
        true => Vec::new(),
        false => configured.to_vec(),
    }
}

/// The drain is over: recorded with the units stopped and its error, said, and a failure
/// noticed (the termination action is completed all the same).
fn drained(
    state: &StateDir,
    w: &Watch,
    reason: &str,
    about: serde_json::Value,
    stopped: Vec<String>,
    error: Option<String>,
    notices: &mut tokio::task::JoinSet<()>,
) -> Result<()> {
    lifecycle::update(state, |r| {
        if let Some(d) = r.drain.as_mut() {
            d.done = Some(now());
            d.error = error.clone();
            d.stopped = stopped.clone();
        }
    })?;
    match error {
        None => tracing::info!(reason, "drained: stopped {stopped:?}"),
        Some(e) => {
            tracing::error!(
                reason,
                "the drain failed: {e}; completing the termination action all the same"
            );
            notify(notices, state, w, "drain", about, Some(("drain", e)));
        }
    }
    Ok(())
}

/// `drain.d`, then each unit stopped in order, all by `deadline`. Units are stopped
/// whatever the hooks did: the instance leaves either way, and the app had better get
/// its SIGTERM and its grace. Returns the units stopped and what went wrong, if anything.
#[allow(clippy::too_many_arguments)]
async fn run_drain(
    state: StateDir,
    dirs: HookDirs,
    systemctl: PathBuf,
    units: Vec<String>,
    env: Vec<(String, String)>,
    deadline: Deadline,
    deadline_text: String,
    notifier: Notifier,
) -> (Vec<String>, Option<String>) {
    let limit = format!("the drain's deadline ({deadline_text})");
    let mut errors = Vec::new();
    if let Err(e) = hooks::run_kinds(
        &state,
        &dirs,
        &[Kind::Drain],
        &env,
        deadline,
        &limit,
        notifier,
    )
    .await
    {
        errors.push(e.to_string());
    }
    let mut stopped = Vec::new();
    for unit in units {
        if deadline.remaining().is_zero() {
            // Past the deadline the app still gets its SIGTERM now, without a wait for it:
            // systemd goes on stopping the unit, within its TimeoutStopSec=.
            errors.push(format!(
                "{unit}: stop queued (not waited for) past the drain's deadline ({deadline_text})"
            ));
            match queue_stop(&systemctl, &unit).await {
                Ok(()) => stopped.push(unit),
                Err(why) => errors.push(format!("systemctl stop --no-block {unit}: {why}")),
            }
            continue;
        }
        notifier.status(&format!("draining: stopping {unit}"));
        tracing::info!(unit, "stopping");
        match stop_unit(&systemctl, &unit, deadline).await {
            Ok(()) => stopped.push(unit),
            Err(why) => errors.push(format!("systemctl stop {unit}: {why}")),
        }
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    (stopped, error)
}

/// `systemctl stop -- UNIT`: returns once systemd has stopped it (after its
/// `ExecStop=`, its SIGTERM and its `TimeoutStopSec=`), or at the deadline.
async fn stop_unit(
    systemctl: &Path,
    unit: &str,
    deadline: Deadline,
) -> std::result::Result<(), String> {
    let mut command = tokio::process::Command::new(systemctl);
    command
        .args(["stop", "--", unit])
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .stdin(std::process::Stdio::null());
    match child::run_bounded(command, deadline.remaining()).await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(child::describe(status)),
        Err(child::ChildError::TimedOut(_)) => {
            Err("still stopping at the drain's deadline (systemd goes on stopping it)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `systemctl stop --no-block -- UNIT`: the stop queued, not waited for.
async fn queue_stop(systemctl: &Path, unit: &str) -> std::result::Result<(), String> {
    let mut command = tokio::process::Command::new(systemctl);
    command
        .args(["stop", "--no-block", "--", unit])
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .stdin(std::process::Stdio::null());
    match child::run_bounded(command, QUEUE_STOP).await {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(child::describe(status)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Spot hibernation stops no unit; any other drain stops those configured.
    #[test]
    fn a_hibernation_stops_nothing() {
        let units = vec!["app.service".to_string(), "worker.service".to_string()];
        let env = |action: &str| vec![("BOOTSTAGE_SPOT_ACTION".to_string(), action.to_string())];
        assert_eq!(
            units_to_stop(&units, &env("hibernate")),
            Vec::<String>::new()
        );
        assert_eq!(units_to_stop(&units, &env("terminate")), units);
        assert_eq!(units_to_stop(&units, &env("stop")), units);
        assert_eq!(units_to_stop(&units, &[]), units);
    }
}
