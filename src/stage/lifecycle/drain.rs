//! The instance's later life, acted on (`life.rs` decides): once the launch is behind it,
//! the lifecycle watcher looks at IMDS's four paths every 5 s with one IMDSv2 token and
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
//! On Compute Engine (`instance.json`'s `source` is `gcp`), the looks are the last answers
//! of two long polls kept open in the background, `instance/preempted` and
//! `instance/maintenance-event` (`?wait_for_change=true&timeout_sec=60` with the last ETag,
//! each request bounded, `Metadata-Flavor: Google` both ways): a change wakes the watcher
//! at once, and nothing is asked between changes but the next wait. There, the group, its
//! termination hook and the status tags are AWS's and not asked (said once at the start).
//!
//! On Azure (`source` `azure`), the looks are the last answer of Azure's scheduled events
//! (`/metadata/scheduledevents?api-version=2020-07-01`, `Metadata: true`), polled in the
//! background once a second as Microsoft recommends (or at `--poll-every`, if shorter),
//! each request bounded at 5 s but the first, which enables the service and may take up
//! to two minutes (bounded at [`AZURE_FIRST_CALL`]); only the events whose `Resources`
//! name this VM (`instance.json`'s `instance_name`, Azure's `compute.name`) are looked
//! at. An event is approved (`POST` of `StartRequests`, bounded at 5 s, tried again at the
//! next look when it fails) once its hooks ran or its drain is over, and recorded, so a
//! restarted watcher approves nothing twice. SIGTERM does not cut a POST in flight (it is
//! bounded): the approval Azure took is recorded first. Only a watcher killed outright
//! between the answer and the record would approve again, which Azure answers 200 all the
//! same. Nothing of AWS's is asked there either.
//!
//! Each step is written to `lifecycle/record.json` as it is decided, so a watcher that
//! restarts acts on nothing twice: a drain that was begun is never begun again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::life::{self, Act, HostMaintenance, Look, Memory, Plan};
use super::{FALLBACK_HEARTBEAT, SIGNAL_TIMEOUT, cloud, connect, now, signal};
use crate::base::child;
use crate::base::notify::Notifier;
use crate::base::retry::{self, Deadline, RetryHint};
use crate::base::stop::Stop;
use crate::imds::provider::Provider;
use crate::imds::{self, ImdsError, azure, gcp};
use crate::orchestrator::{Config, Delivery, LaunchHook};
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
/// How often the group is asked where it has the instance while it leaves.
const GROUP_LOOK: Duration = Duration::from_secs(5);
/// A stop queued past the deadline: systemd answers at once.
const QUEUE_STOP: Duration = Duration::from_secs(5);
/// Each IMDS GET.
const IMDS_REQUEST: Duration = Duration::from_secs(2);
/// Each long poll of Compute Engine's metadata server waits at most this long for a
/// change (`timeout_sec`); the request is bounded by it plus `gcp::WAIT_MARGIN`.
const GCP_WAIT_SEC: u64 = 60;
/// The least time between two long polls of one key: a server that answers at once with
/// a new ETag every time (a broken proxy) is not asked in a loop; a change is still seen
/// at once, the next poll answering it as soon as it is asked.
const GCP_LEAST_GAP: Duration = Duration::from_millis(250);
/// Azure's scheduled events: the first request enables the service ("a delayed response
/// in your first call of up to two minutes"), the later ones answer at once.
pub const AZURE_FIRST_CALL: Duration = Duration::from_secs(125);
const AZURE_REQUEST: Duration = Duration::from_secs(5);
/// Microsoft recommends polling the scheduled events once a second.
const AZURE_POLL: Duration = Duration::from_secs(1);
/// An instance's life has no end the watcher knows of: its IMDS client's deadline is far.
const LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
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
        // A restarted watcher: the drain is never run twice; what is left is the leaving.
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
            approve_once(state, w, &id, stop).await;
        }
        let mut leaving = Leaving::new(state, config.as_ref(), begun.deadline_unix);
        leaving.finish(state, stop).await;
        return Ok(());
    }
    let Some(mut source) = Source::open(state, w, notifier)? else {
        return Ok(());
    };
    notifier.status("watching the instance's life");
    let mut ticker = tokio::time::interval(source.every(w.poll_every));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runs = Runs::default();
    let mut unread = Unread::default();
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
        let memory = Memory {
            host_before: host_before.clone(),
            busy: runs.busy(),
            ..memory(&record)
        };
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
                Act::Maintenance(event) => {
                    tracing::info!(
                        event = event.id,
                        code = event.code,
                        not_before = event.not_before,
                        "scheduled maintenance: running maintenance.d"
                    );
                    lifecycle::update(state, |r| {
                        // Once each, the latest 64, as the rebalance notices are kept.
                        r.maintenance.retain(|id| *id != event.id);
                        r.maintenance.push(event.id.clone());
                        let extra = r.maintenance.len().saturating_sub(64);
                        r.maintenance.drain(..extra);
                    })?;
                    notify(
                        &mut notices,
                        state,
                        w,
                        "maintenance",
                        event.raw.clone(),
                        None,
                    );
                    runs.queue(Kind::Maintenance, life::event_env(&event), event.id.clone());
                }
                Act::Approve(event) => {
                    let Some(client) = source.approver() else {
                        continue;
                    };
                    // Not cut by SIGTERM (the request is bounded at 5 s): an approval
                    // Azure took is recorded before the watch ends, so a restarted
                    // watcher does not send it again.
                    approve(state, &client, &event.id, &mut unread).await;
                }
                Act::Rebalance {
                    notice,
                    hooks,
                    undo_due,
                } => {
                    lifecycle::update(state, |r| {
                        r.rebalance.notices.push(notice.clone());
                        let extra = r.rebalance.notices.len().saturating_sub(64);
                        r.rebalance.notices.drain(..extra);
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
                        notify(&mut notices, state, w, "rebalance", about, None);
                        let env = vec![("BOOTSTAGE_REBALANCE_NOTICE_TIME".into(), notice)];
                        runs.queue(Kind::Rebalance, env, "rebalance".into());
                    } else {
                        tracing::info!(
                            notice_time = notice,
                            "another rebalance recommendation: rebalance.d already ran; the undo moves to {undo_at}"
                        );
                    }
                }
                Act::Undo => {
                    let last = record.rebalance.notices.last().cloned().unwrap_or_default();
                    tracing::info!(
                        "no interruption followed the rebalance recommendation: running rebalance-undo.d"
                    );
                    lifecycle::update(state, |r| {
                        r.rebalance.undo_due_unix = None;
                        r.rebalance.undone += 1;
                    })?;
                    let about = json!({"notice_time": last, "undo": true});
                    notify(&mut notices, state, w, "rebalance", about, None);
                    let env = vec![("BOOTSTAGE_REBALANCE_NOTICE_TIME".into(), last)];
                    runs.queue(Kind::RebalanceUndo, env, "rebalance-undo".into());
                }
            }
        }
        runs.step(state, &w.dirs, notifier).await;
        // Delivered notices are done with; their errors were logged.
        while notices.try_join_next().is_some() {}
    }
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
        host_before: None,
        approved: record.approved.clone(),
        busy: Vec::new(),
    }
}

/// Approves an Azure event (one POST) and records it; a failure is said once per event
/// and the next look tries again.
async fn approve(state: &StateDir, client: &azure::Client, id: &str, unread: &mut Unread) {
    match client.approve(&[id.to_string()], AZURE_REQUEST).await {
        Ok(()) => {
            tracing::info!(event = id, "scheduled event approved: Azure may go ahead");
            unread.1.remove(id);
            if let Err(e) = lifecycle::update(state, |r| {
                if !r.approved.iter().any(|a| a == id) {
                    r.approved.push(id.to_string());
                }
            }) {
                tracing::error!("the approval of {id} is not recorded: {e}");
            }
        }
        Err(e) => {
            if unread.1.insert(id.to_string()) {
                tracing::warn!(
                    event = id,
                    "cannot approve the scheduled event: {e}; trying again at the next look"
                );
            }
        }
    }
}

/// After a drain on Azure: its event approved, tried for at most [`SIGNAL_TIMEOUT`]
/// (SIGTERM ends the tries).
async fn approve_once(state: &StateDir, w: &Watch, id: &str, stop: &mut Stop) {
    let Ok(client) = azure_client(w) else {
        return;
    };
    approve_within(state, &client, id, stop).await;
}

async fn approve_within(state: &StateDir, client: &azure::Client, id: &str, stop: &mut Stop) {
    let deadline = Deadline::after(SIGNAL_TIMEOUT);
    let mut unread = Unread::default();
    let mut backoff = retry::NOTICE.full_jitter();
    loop {
        approve(state, client, id, &mut unread).await;
        let done = lifecycle::read(state)
            .ok()
            .flatten()
            .is_some_and(|r| r.approved.iter().any(|a| a == id));
        let wait = backoff.next().unwrap_or(retry::NOTICE.cap);
        if done || deadline.remaining() <= wait {
            if !done {
                tracing::error!(
                    event = id,
                    "the scheduled event is not approved: Azure goes ahead at its NotBefore"
                );
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.requested() => return,
        }
    }
}

/// Azure's IMDS client for the watcher; its endpoint as the metadata stage's.
fn azure_client(w: &Watch) -> std::result::Result<azure::Client, String> {
    let env = |v: &str| std::env::var(v).ok();
    let endpoint = azure::resolve_endpoint(w.imds_endpoint.as_deref(), env).inspect_err(|why| {
        tracing::error!("cannot reach Azure's IMDS: {why}");
    })?;
    azure::Client::new(azure::Options {
        endpoint,
        request_timeout: AZURE_REQUEST,
        deadline: Deadline::after(LIFETIME),
    })
    .map_err(|e| e.to_string())
}

/// Where the looks come from: IMDS, polled; or Compute Engine's metadata server,
/// long-polled in the background.
enum Source {
    Aws(imds::Client),
    Gcp(GcpWatch),
    Azure(AzureWatch),
}

impl Source {
    /// The provider's client, from `instance.json`'s `source` (`gcp`, else IMDS as
    /// always); `None` when its endpoint setting is wrong (said, and nothing watched).
    fn open(state: &StateDir, w: &Watch, notifier: Notifier) -> Result<Option<Source>> {
        let env = |v: &str| std::env::var(v).ok();
        let unwatched = |why: String| {
            tracing::error!("cannot watch the instance's life: {why}");
            notifier
                .status("cannot reach the metadata service: the instance's life is not watched");
        };
        if cloud(state) == Provider::Azure {
            let client = match azure_client(w) {
                Ok(client) => client,
                Err(why) => {
                    unwatched(why);
                    return Ok(None);
                }
            };
            let vm = crate::imds::facts::Facts::of(state).and_then(|f| f.instance_name);
            match &vm {
                Some(vm) => tracing::info!(
                    vm,
                    "watching the instance's life: Azure's scheduled events every {:?}, those naming this VM",
                    w.poll_every.min(AZURE_POLL)
                ),
                None => tracing::error!(
                    "the VM's name is unknown (instance.json has no instance_name): no scheduled event can be told to concern it, and none is acted on"
                ),
            }
            let every = w.poll_every.min(AZURE_POLL);
            return Ok(Some(Source::Azure(AzureWatch::start(client, vm, every))));
        }
        if cloud(state) == Provider::Gcp {
            let endpoint = match gcp::resolve_endpoint(w.imds_endpoint.as_deref(), env) {
                Ok(endpoint) => endpoint,
                Err(why) => {
                    unwatched(why);
                    return Ok(None);
                }
            };
            let client = gcp::Client::new(gcp::Options {
                endpoint,
                request_timeout: IMDS_REQUEST,
                deadline: Deadline::after(LIFETIME),
            })?;
            tracing::info!(
                "watching the instance's life: Compute Engine's {} and {}, long-polled (at most {GCP_WAIT_SEC} s a request)",
                life::GCP_PREEMPTED,
                life::GCP_MAINTENANCE
            );
            return Ok(Some(Source::Gcp(GcpWatch::start(client, w.poll_every))));
        }
        let endpoint = match imds::resolve_endpoint(w.imds_endpoint.as_deref(), env) {
            Ok(endpoint) => endpoint,
            Err(why) => {
                unwatched(why);
                return Ok(None);
            }
        };
        let client = imds::Client::new(imds::Options {
            endpoint,
            v2_only: false,
            request_timeout: IMDS_REQUEST,
            deadline: Deadline::after(LIFETIME),
        })?;
        tracing::info!(
            "watching the instance's life: IMDS every {:?} (target lifecycle state, Spot interruption, rebalance, maintenance)",
            w.poll_every
        );
        Ok(Some(Source::Aws(client)))
    }

    /// Resolves when a long poll brought a new answer (never for IMDS: the ticker looks).
    async fn changed(&mut self) {
        match self {
            Source::Aws(_) => std::future::pending().await,
            Source::Gcp(g) => g.changed().await,
            Source::Azure(a) => a.changed().await,
        }
    }

    async fn look(&mut self, unread: &mut Unread) -> Look {
        match self {
            Source::Aws(client) => look(client, unread).await,
            Source::Gcp(g) => g.look(),
            Source::Azure(a) => a.look(),
        }
    }

    /// Between two looks: `--poll-every`, on Azure at most a second (also how soon an
    /// event whose hooks ended is approved).
    fn every(&self, poll_every: Duration) -> Duration {
        match self {
            Source::Azure(_) => poll_every.min(AZURE_POLL),
            _ => poll_every,
        }
    }

    /// Azure's client, to approve events with.
    fn approver(&self) -> Option<std::sync::Arc<azure::Client>> {
        match self {
            Source::Azure(a) => Some(a.client.clone()),
            _ => None,
        }
    }
}

/// Azure's scheduled events, polled by a task of its own; its last answer.
/// Dropping it ends the poll.
struct AzureWatch {
    client: std::sync::Arc<azure::Client>,
    last: tokio::sync::watch::Receiver<Option<azure::ScheduledEvents>>,
    /// This VM's name (`compute.name`); `None`: no event is known to concern it.
    vm: Option<String>,
    _poll: tokio::task::JoinSet<()>,
}

impl AzureWatch {
    fn start(client: azure::Client, vm: Option<String>, every: Duration) -> AzureWatch {
        let client = std::sync::Arc::new(client);
        let (tx, last) = tokio::sync::watch::channel(None);
        let mut poll = tokio::task::JoinSet::new();
        poll.spawn(azure_poll(client.clone(), tx, every));
        AzureWatch {
            client,
            last,
            vm,
            _poll: poll,
        }
    }

    async fn changed(&mut self) {
        if self.last.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The events of the last answer that concern this VM.
    fn look(&mut self) -> Look {
        let last = self.last.borrow_and_update().clone();
        let scheduled = match (&last, &self.vm) {
            (Some(doc), Some(vm)) => life::azure_events(&doc.events, vm),
            _ => Vec::new(),
        };
        Look {
            scheduled,
            ..Look::default()
        }
    }
}

/// The scheduled events, asked every `every` until the task is aborted; each answer that
/// differs from the last is sent on. The first request may take up to two minutes (it
/// enables the service): it is bounded at [`AZURE_FIRST_CALL`], the others at
/// [`AZURE_REQUEST`]. Failures are said once (until it answers again) and asked again
/// after `retry::NOTICE`'s backoff.
async fn azure_poll(
    client: std::sync::Arc<azure::Client>,
    tx: tokio::sync::watch::Sender<Option<azure::ScheduledEvents>>,
    every: Duration,
) {
    let mut answered = false;
    let mut failing = false;
    let mut backoff = retry::NOTICE.full_jitter();
    loop {
        let asked = tokio::time::Instant::now();
        let timeout = if answered {
            AZURE_REQUEST
        } else {
            AZURE_FIRST_CALL
        };
        match client.scheduled_events(timeout).await {
            Ok(doc) => {
                answered = true;
                if std::mem::take(&mut failing) {
                    tracing::info!("Azure's scheduled events answer again");
                }
                backoff = retry::NOTICE.full_jitter();
                tx.send_if_modified(|last| match last.as_ref() == Some(&doc) {
                    true => false,
                    false => {
                        tracing::debug!(incarnation = doc.incarnation, "scheduled events");
                        *last = Some(doc);
                        true
                    }
                });
                tokio::time::sleep(every.saturating_sub(asked.elapsed())).await;
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("cannot read Azure's scheduled events: {e}; asking again");
                }
                let wait = backoff.next().unwrap_or(retry::NOTICE.cap);
                tokio::time::sleep(wait.max(e.retry_after().unwrap_or_default())).await;
            }
        }
    }
}

/// Compute Engine's two keys, each long-polled by a task of its own; their last answers.
/// Dropping it ends the polls (the tasks are aborted with the set).
struct GcpWatch {
    preempted: tokio::sync::watch::Receiver<Option<gcp::Waited>>,
    maintenance: tokio::sync::watch::Receiver<Option<gcp::Waited>>,
    _polls: tokio::task::JoinSet<()>,
    /// Values Google does not document, said once each.
    odd: std::collections::BTreeSet<String>,
}

impl GcpWatch {
    fn start(client: gcp::Client, pause: Duration) -> GcpWatch {
        let client = std::sync::Arc::new(client);
        let mut polls = tokio::task::JoinSet::new();
        let (preempted, rx_preempted) = tokio::sync::watch::channel(None);
        let (maintenance, rx_maintenance) = tokio::sync::watch::channel(None);
        polls.spawn(long_poll(
            client.clone(),
            life::GCP_PREEMPTED,
            preempted,
            pause,
        ));
        polls.spawn(long_poll(client, life::GCP_MAINTENANCE, maintenance, pause));
        GcpWatch {
            preempted: rx_preempted,
            maintenance: rx_maintenance,
            _polls: polls,
            odd: Default::default(),
        }
    }

    async fn changed(&mut self) {
        let ended = tokio::select! {
            r = self.preempted.changed() => r.is_err(),
            r = self.maintenance.changed() => r.is_err(),
        };
        // A poll never ends while the watch runs; if one did, only the ticker wakes us.
        if ended {
            std::future::pending::<()>().await;
        }
    }

    /// The last answers as a look (marked seen, so `changed` waits for the next).
    fn look(&mut self) -> Look {
        let preempted = self.preempted.borrow_and_update().clone();
        let host = self.maintenance.borrow_and_update().clone();
        if let Some(p) = &preempted
            && !matches!(p.value.as_str(), "TRUE" | "FALSE")
        {
            self.odd(life::GCP_PREEMPTED, &p.value);
        }
        if let Some(h) = &host
            && ![life::HOST_NONE, life::HOST_MIGRATE, life::HOST_TERMINATE]
                .contains(&h.value.as_str())
        {
            self.odd(life::GCP_MAINTENANCE, &h.value);
        }
        Look {
            preempted: preempted.is_some_and(|p| p.value == "TRUE"),
            host_maintenance: host.map(|h| HostMaintenance {
                value: h.value,
                etag: h.etag,
            }),
            ..Look::default()
        }
    }

    fn odd(&mut self, path: &str, value: &str) {
        if self.odd.insert(format!("{path} {value}")) {
            // Metadata-server values are Google's, not the user's: shown escaped all the same.
            tracing::warn!(
                path,
                "an undocumented value {:?}: nothing done about it",
                value.chars().take(64).collect::<String>()
            );
        }
    }
}

/// One key long-polled until the task is aborted: each answer sent on when it differs
/// from the last; the next wait names the last ETag (the first `0`, so it answers at once;
/// after an answer without one, none: the server waits for the next change). Failures are said once (until it
/// answers again) and asked again after `retry::NOTICE`'s backoff; an absent key (404), or
/// an unchanged answer that came back sooner than `pause`, waits `pause` before the next.
async fn long_poll(
    client: std::sync::Arc<gcp::Client>,
    path: &'static str,
    tx: tokio::sync::watch::Sender<Option<gcp::Waited>>,
    pause: Duration,
) {
    // An ETag no answer has (as Google's own samples start): the first poll answers at
    // once with the value as it stands.
    let mut etag = Some("0".to_string());
    let mut backoff = retry::NOTICE.full_jitter();
    let mut failing = false;
    loop {
        let asked = tokio::time::Instant::now();
        match client
            .wait_for_change(path, etag.as_deref(), GCP_WAIT_SEC)
            .await
        {
            Ok(answer) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(path, "the metadata server answers again");
                }
                backoff = retry::NOTICE.full_jitter();
                etag = answer.as_ref().and_then(|a| a.etag.clone());
                let absent = answer.is_none();
                let changed = tx.send_if_modified(|last| match *last == answer {
                    true => false,
                    false => {
                        *last = answer;
                        true
                    }
                });
                let gap = match absent || !changed {
                    true => pause.max(GCP_LEAST_GAP),
                    false => GCP_LEAST_GAP,
                };
                tokio::time::sleep(gap.saturating_sub(asked.elapsed())).await;
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(path, "cannot read the metadata server: {e}; asking again");
                }
                let wait = backoff.next().unwrap_or(retry::NOTICE.cap);
                tokio::time::sleep(wait.max(e.retry_after().unwrap_or_default())).await;
            }
        }
    }
}

/// IMDS paths whose last read failed, and Azure events whose last approval failed, so
/// each failure is said once, not at every look.
#[derive(Default)]
struct Unread(
    std::collections::BTreeSet<&'static str>,
    std::collections::BTreeSet<String>,
);

/// One look: the four GETs at once, with the client's one token.
async fn look(client: &imds::Client, unread: &mut Unread) -> Look {
    let (target, spot, rebalance, maintenance) = tokio::join!(
        client.text(life::TARGET),
        client.text(life::SPOT),
        client.text(life::REBALANCE),
        client.text(life::MAINTENANCE),
    );
    let mut read =
        |path: &'static str, answer: std::result::Result<Option<String>, ImdsError>| match answer {
            Ok(text) => {
                if unread.0.remove(path) {
                    tracing::info!(path, "IMDS answers again");
                }
                text
            }
            Err(e) => {
                if unread.0.insert(path) {
                    tracing::warn!(path, "cannot read IMDS: {e}; asking again at the next look");
                }
                None
            }
        };
    Look {
        target: read(life::TARGET, target),
        spot: read(life::SPOT, spot).as_deref().and_then(life::spot),
        rebalance: read(life::REBALANCE, rebalance)
            .as_deref()
            .and_then(life::rebalance),
        maintenance: read(life::MAINTENANCE, maintenance)
            .as_deref()
            .map(life::maintenance)
            .unwrap_or_default(),
        ..Look::default()
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
        if let Some((what, _, run)) = self.running.take_if(|(_, _, run)| run.is_finished()) {
            match run.await {
                Ok(Ok((ran, _))) => tracing::info!("{what}: {ran} hook(s) ran"),
                Ok(Err(e)) => tracing::error!("{what}: {e}"),
                Err(e) => tracing::error!("{what}: {e}"),
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
    let mut units = config.map(Config::drain).unwrap_or_default().stop;
    // A Spot hibernation resumes this same boot: nothing would start a stopped app again.
    // drain.d still runs (checkpoint, deregister); the app sleeps with the instance.
    if plan
        .env
        .iter()
        .any(|(k, v)| k == "BOOTSTAGE_SPOT_ACTION" && v == "hibernate")
    {
        if !units.is_empty() {
            tracing::info!("a Spot hibernation resumes this boot: {units:?} not stopped");
        }
        units.clear();
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
    lifecycle::update(state, |r| {
        if let Some(d) = r.drain.as_mut() {
            d.done = Some(now());
            d.error = error.clone();
            d.stopped = stopped.clone();
        }
    })?;
    match &error {
        None => tracing::info!(reason, "drained: stopped {stopped:?}"),
        Some(e) => {
            tracing::error!(
                reason,
                "the drain failed: {e}; completing the termination action all the same"
            );
            notify(
                notices,
                state,
                w,
                "drain",
                about,
                Some(("drain", e.clone())),
            );
        }
    }
    // Azure: the drain's event approved, so the eviction or deletion may go ahead early.
    if let (Some(id), Some(client)) = (&plan.approve, &approver) {
        approve_within(state, client, id, stop).await;
    }
    notifier.status("drained: completing the termination action");
    leaving.finish(state, stop).await;
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

/// The termination action: found, heartbeated while it waits, completed once.
struct Leaving {
    /// The termination hook's name, when the settings name one.
    name: Option<String>,
    config: Option<Config>,
    deadline_unix: u64,
    /// The hook, once the group is found; `None` inside: in no group.
    hook: Option<Option<LaunchHook>>,
    every: Duration,
    next_beat: tokio::time::Instant,
    said: std::collections::BTreeSet<String>,
}

impl Leaving {
    /// Off EC2 there is no group: no termination hook is looked for.
    fn new(state: &StateDir, config: Option<&Config>, deadline_unix: u64) -> Leaving {
        Leaving {
            name: config
                .and_then(|c| c.asg.as_ref())
                .and_then(|a| a.termination_hook.clone())
                .filter(|_| cloud(state) == Provider::Aws),
            config: config.cloned(),
            deadline_unix,
            hook: None,
            every: FALLBACK_HEARTBEAT,
            next_beat: tokio::time::Instant::now(),
            said: Default::default(),
        }
    }

    /// Logs `what` once (a failure repeated every look is said the first time).
    fn once(&mut self, what: String) {
        if self.said.insert(what.clone()) {
            tracing::warn!("{what}");
        }
    }

    /// The termination hook, found on first use; `None` when there is none to complete.
    async fn hook(&mut self, state: &StateDir) -> Option<LaunchHook> {
        let name = self.name.clone()?;
        if self.hook.is_none() {
            let config = self.config.clone()?;
            match connect(state, config, Deadline::after(SIGNAL_TIMEOUT)).await {
                Ok(link) => {
                    let hook = link.hook.map(|h| h.other(&name));
                    if let Some(hook) = &hook {
                        match hook.heartbeat_timeout(Deadline::after(SIGNAL_TIMEOUT)).await {
                            Ok(t) => self.every = (t / 3).max(Duration::from_secs(1)),
                            Err(e) => self.once(format!(
                                "the termination hook's heartbeat timeout is unknown ({e}); heartbeating every {FALLBACK_HEARTBEAT:?}"
                            )),
                        }
                    }
                    self.hook = Some(hook);
                }
                Err(e) => {
                    self.once(format!("cannot reach the group yet: {e}"));
                    return None;
                }
            }
        }
        self.hook.clone().flatten()
    }

    /// One look at the group: a heartbeat when the action waits and one is due; with
    /// `drained`, the completion when it waits. Returns whether there is nothing more to do.
    async fn look(&mut self, state: &StateDir, drained: bool) -> bool {
        let past = life::unix(SystemTime::now()) >= self.deadline_unix;
        if self.name.is_none() {
            return true;
        }
        let Some(hook) = self.hook(state).await else {
            // In no group (nothing to complete), or the group is not reachable yet.
            return matches!(self.hook, Some(None)) || (drained && past);
        };
        let group_state = match hook.lifecycle_state(Deadline::after(GROUP_LOOK * 2)).await {
            Ok(s) => s,
            Err(e) => {
                self.once(format!(
                    "cannot ask the group where it has the instance: {e}"
                ));
                return drained && past;
            }
        };
        match life::leaving(group_state.as_deref(), drained, past) {
            life::Leave::Complete => self.complete(state, &hook, past).await,
            life::Leave::Done(why) => {
                tracing::info!("the termination action: {why}");
                true
            }
            life::Leave::GiveUp(why) => {
                tracing::error!("the termination action: {why}; not completed");
                true
            }
            life::Leave::Wait if life::waiting(group_state.as_deref()) => {
                if tokio::time::Instant::now() >= self.next_beat {
                    self.next_beat = tokio::time::Instant::now() + self.every;
                    match hook.heartbeat(Deadline::after(SIGNAL_TIMEOUT)).await {
                        Ok(Delivery::Delivered) => {
                            let _ = lifecycle::update(state, |r| {
                                r.heartbeats += 1;
                                r.last_heartbeat_at = Some(now());
                            });
                        }
                        Ok(Delivery::NothingWaiting(_)) => {}
                        Err(e) => self.once(format!("termination heartbeat not delivered: {e}")),
                    }
                }
                false
            }
            life::Leave::Wait => false,
        }
    }

    /// CONTINUE, recorded. Returns whether it is settled (delivered, or nothing waited);
    /// one not delivered is tried again at the next look until past the deadline.
    async fn complete(&mut self, state: &StateDir, hook: &LaunchHook, past: bool) -> bool {
        let delivery = hook.complete(true, Deadline::after(SIGNAL_TIMEOUT)).await;
        let sent = signal(
            "CompleteLifecycleAction (termination)",
            "CONTINUE",
            &delivery,
        );
        let settled = sent.delivered;
        let _ = lifecycle::update(state, |r| {
            if !r.termination.as_ref().is_some_and(|s| s.taken()) {
                r.termination = Some(sent);
            }
        });
        settled || past
    }

    /// After the drain: looks at the group until the action is completed or there is
    /// nothing to complete, or SIGTERM.
    async fn finish(&mut self, state: &StateDir, stop: &mut Stop) {
        loop {
            if self.look(state, true).await {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.between_looks()) => {}
                _ = stop.requested() => return,
            }
        }
    }

    /// Between two looks at the group: often enough for the heartbeats.
    fn between_looks(&self) -> Duration {
        GROUP_LOOK.min(self.every)
    }
}
