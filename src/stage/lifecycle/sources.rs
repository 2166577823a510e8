//! Where the lifecycle watcher's looks come from (`drain.rs` acts on them): IMDS's four
//! paths, asked at each tick with one IMDSv2 token; Compute Engine's two long polls; or
//! Azure's scheduled events, polled in the background, and their approval.
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
//! between the answer and the record, or restarted after its record write failed (the
//! running watcher remembers its approvals in memory too), would approve again, which
//! Azure answers 200 all the same. Nothing of AWS's is asked there either.

use std::time::Duration;

use super::drain::Watch;
use super::life::{self, HostMaintenance, Look};
use super::{SIGNAL_TIMEOUT, cloud};
use crate::base::notify::Notifier;
use crate::base::retry::{self, Deadline, RetryHint};
use crate::base::stop::Stop;
use crate::imds::provider::Provider;
use crate::imds::{self, ImdsError, azure, gcp};
use crate::stage::error::Result;
use crate::state::StateDir;
use crate::state::lifecycle;

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
const AZURE_FIRST_CALL: Duration = Duration::from_secs(125);
const AZURE_REQUEST: Duration = Duration::from_secs(5);
/// Microsoft recommends polling the scheduled events once a second.
const AZURE_POLL: Duration = Duration::from_secs(1);
/// An instance's life has no end the watcher knows of: its IMDS client's deadline is far.
const LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Where the looks come from: IMDS, polled; Compute Engine's metadata server,
/// long-polled in the background; or Azure's scheduled events, polled in the background.
pub(super) enum Source {
    Aws(imds::Client),
    Gcp(GcpWatch),
    Azure(AzureWatch),
}

/// A client or endpoint from the watcher's settings; a wrong setting is said (the log and
/// the unit's status), and the instance's life is not watched.
fn watchable<T>(resolved: std::result::Result<T, String>, notifier: &Notifier) -> Option<T> {
    match resolved {
        Ok(value) => Some(value),
        Err(why) => {
            tracing::error!("cannot watch the instance's life: {why}");
            notifier
                .status("cannot reach the metadata service: the instance's life is not watched");
            None
        }
    }
}

impl Source {
    /// The client of the instance's cloud (`cloud`: `instance.json`'s `source`, else
    /// `BOOTSTAGE_PROVIDER` or the DMI; EC2's IMDS unless Azure or GCP); `None` when its
    /// endpoint setting is wrong (said, and nothing watched).
    pub(super) fn open(state: &StateDir, w: &Watch, notifier: Notifier) -> Result<Option<Source>> {
        let env = |v: &str| std::env::var(v).ok();
        if cloud(state) == Provider::Azure {
            let Some(client) = watchable(azure_client(w), &notifier) else {
                return Ok(None);
            };
            let every = w.poll_every.min(AZURE_POLL);
            let vm = crate::imds::facts::Facts::of(state).and_then(|f| f.instance_name);
            match &vm {
                Some(vm) => tracing::info!(
                    vm,
                    "watching the instance's life: Azure's scheduled events every {every:?}, those naming this VM"
                ),
                None => tracing::error!(
                    "the VM's name is unknown (instance.json has no instance_name): no scheduled event can be told to concern it, and none is acted on"
                ),
            }
            return Ok(Some(Source::Azure(AzureWatch::start(client, vm, every))));
        }
        if cloud(state) == Provider::Gcp {
            let Some(endpoint) = watchable(
                gcp::resolve_endpoint(w.imds_endpoint.as_deref(), env),
                &notifier,
            ) else {
                return Ok(None);
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
        let Some(endpoint) = watchable(
            imds::resolve_endpoint(w.imds_endpoint.as_deref(), env),
            &notifier,
        ) else {
            return Ok(None);
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
    pub(super) async fn changed(&mut self) {
        match self {
            Source::Aws(_) => std::future::pending().await,
            Source::Gcp(g) => g.changed().await,
            Source::Azure(a) => a.changed().await,
        }
    }

    pub(super) async fn look(&mut self, unread: &mut Unread) -> Look {
        match self {
            Source::Aws(client) => look(client, unread).await,
            Source::Gcp(g) => g.look(),
            Source::Azure(a) => a.look(),
        }
    }

    /// Between two looks: `--poll-every`, on Azure at most a second (also how soon an
    /// event whose hooks ended is approved).
    pub(super) fn every(&self, poll_every: Duration) -> Duration {
        match self {
            Source::Azure(_) => poll_every.min(AZURE_POLL),
            _ => poll_every,
        }
    }

    /// Azure: approves an event (nothing elsewhere); whether Azure took it. Not cut by
    /// SIGTERM (the request is bounded at 5 s): an approval Azure took is recorded before
    /// the watch ends, so a restarted watcher does not send it again (unless the record
    /// could not be written).
    pub(super) async fn approve(&self, state: &StateDir, id: &str, unread: &mut Unread) -> bool {
        let Some(client) = self.approver() else {
            return false;
        };
        approve(state, &client, id, unread).await
    }

    /// Azure's client, to approve events with.
    pub(super) fn approver(&self) -> Option<std::sync::Arc<azure::Client>> {
        match self {
            Source::Azure(a) => Some(a.client.clone()),
            _ => None,
        }
    }
}

/// IMDS paths whose last read failed, and Azure events whose last approval failed, so
/// each failure is said once, not at every look.
#[derive(Default)]
pub(super) struct Unread(
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

/// Compute Engine's two keys, each long-polled by a task of its own; their last answers.
/// Dropping it ends the polls (the tasks are aborted with the set).
pub(super) struct GcpWatch {
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

/// Azure's scheduled events, polled by a task of its own; its last answer.
/// Dropping it ends the poll.
pub(super) struct AzureWatch {
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

/// Approves an Azure event (one POST) and records it; whether Azure took it (recorded or
/// not: the watch loop remembers it either way, a drain's approval stops trying). A failure is said once per event and the
/// next look tries again.
async fn approve(state: &StateDir, client: &azure::Client, id: &str, unread: &mut Unread) -> bool {
    match client.approve(&[id.to_string()], AZURE_REQUEST).await {
        Ok(()) => {
            tracing::info!(event = id, "scheduled event approved: Azure may go ahead");
            unread.1.remove(id);
            if let Err(e) = lifecycle::update(state, |r| lifecycle::remember(&mut r.approved, id)) {
                tracing::error!("the approval of {id} is not recorded: {e}");
            }
            true
        }
        Err(e) => {
            if unread.1.insert(id.to_string()) {
                tracing::warn!(
                    event = id,
                    "cannot approve the scheduled event: {e}; trying again at the next look"
                );
            }
            false
        }
    }
}

/// After a drain on Azure: its event approved, tried for at most [`SIGNAL_TIMEOUT`]
/// (SIGTERM ends the tries).
pub(super) async fn approve_once(state: &StateDir, w: &Watch, id: &str, stop: &mut Stop) {
    let Ok(client) = azure_client(w) else {
        return;
    };
    approve_within(state, &client, id, stop).await;
}

pub(super) async fn approve_within(
    state: &StateDir,
    client: &azure::Client,
    id: &str,
    stop: &mut Stop,
) {
    let deadline = Deadline::after(SIGNAL_TIMEOUT);
    let mut unread = Unread::default();
    let mut backoff = retry::NOTICE.full_jitter();
    loop {
        let done = approve(state, client, id, &mut unread).await;
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
