//! Watch mode: after READY, keep every destination synced until SIGTERM.
//!
//! Three things start a pass:
//! - the interval (`--watch`, or `bootstage.watch.interval`): a pass over every
//!   destination, one LIST each (one conditional GET for a bundle) when nothing changed.
//!   With a queue this is the safety net, for a message that was lost or never sent;
//! - `bootstage.watch.secrets_interval` (none by default): the parameters' references and
//!   imports resolved again (`metadata::Refresher`); a changed value swaps
//!   `params.json`, `params.env`, `hooks.env` and `credentials/` in together, an unchanged
//!   one writes nothing; a failure keeps the values and is tried again at the next one;
//! - a message on the SQS queue (`--sqs`, or `bootstage.watch.sqs`) that names a synced
//!   source or destination, or (for the configured sync) a Parameter Store or Secrets
//!   Manager event naming a reference or an import (`events/`): a pass over what it
//!   names, at once. A task
//!   long-polls the queue (20 s waits) from before READY, so a change made after the
//!   first pass is never missed: its message waits in the queue if nothing is reading.
//!   Messages that arrive together (within 200 ms of each other, for at most 1 s), or
//!   while a pass runs, make one pass (the next one):
//!   a pass syncs to what the source holds now, so order and duplicates do not matter.
//!   A message is deleted once the pass over what it names succeeded; after a failed
//!   pass one message per distinct request is made visible again after 5 s, doubling
//!   with each receive up to 15 min, and its duplicates are deleted.
//!   Messages that name nothing of ours are deleted at once.
//!
//! An unreadable queue (gone, refused, unreachable) is logged and shown in `STATUS=` and
//! `bootstage status` (the watch record, `state::watch`);
//! polling goes on and the queue is tried again, 1 s doubling to 60 s. After a pass
//! swapped anything in (trees, values, or both), the `--on-change` hook runs once, between
//! RELOADING=1 and READY=1, with `BOOTSTAGE_CHANGED` naming the destinations and the state
//! dir; with a release's `verify`, once after every swap and before the verifies, and once
//! more naming the destinations a failed verify swapped back (`release::gate`, which
//! runs them; each swap records the hook owed until it returned, so a watcher stopped
//! before pays it at its next start). A failed pass keeps the old tree and values; SIGTERM ends any wait or pass at once
//! (exit 0, no staging dir left). The parameters as user-data gave them are read (from
//! IMDS, or the user-data file) only when values are first resolved again; until then an
//! event of Parameter Store or Secrets Manager counts as naming ours.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::release::{self, run_hook};
use super::{Report, Settings, SyncError, SyncSpec, Syncer, summarize};
use crate::base::notify::Notifier;
use crate::base::stop::Stop;
use crate::events::{Message, Names, Queue, QueueError, Wake, Watched};
use crate::stage::error::Result;
use crate::stage::metadata::Refresher;
use crate::state::StateDir;
use crate::state::watch::{self as record, Watch};
use crate::sync::source::Location;

/// What the queue reader hands the watch loop.
enum Polled {
    /// A receive answered (with no messages, when none came in 20 s).
    Received(Vec<Message>),
    Failed(QueueError),
}

/// The queue reader, running.
pub(super) struct Listener {
    queue: Arc<Queue>,
    rx: mpsc::Receiver<Polled>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading `queue`; returns once the first receive is on its way. Each message is
/// hidden from other receives for `hidden` (longer than a pass may take).
pub(super) async fn listen(queue: Queue, hidden: Duration) -> Listener {
    let queue = Arc::new(queue);
    // One batch waits while a pass runs; the reader waits for it to be taken, so nothing
    // piles up in memory whatever the queue holds.
    let (tx, rx) = mpsc::channel(1);
    let (started, on_its_way) = oneshot::channel();
    let task = tokio::spawn(receive_loop(queue.clone(), hidden, tx, started));
    let _ = on_its_way.await;
    Listener { queue, rx, task }
}

async fn receive_loop(
    queue: Arc<Queue>,
    hidden: Duration,
    tx: mpsc::Sender<Polled>,
    started: oneshot::Sender<()>,
) {
    let mut started = Some(started);
    let mut failures = 0u32;
    loop {
        let receive = queue.receive(hidden);
        if let Some(started) = started.take() {
            let _ = started.send(());
        }
        let polled = match receive.await {
            Ok(messages) => {
                failures = 0;
                Polled::Received(messages)
            }
            Err(e) => {
                failures += 1;
                Polled::Failed(e)
            }
        };
        if tx.send(polled).await.is_err() {
            return;
        }
        if failures > 0 {
            let wait = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
            tokio::time::sleep(wait).await;
        }
    }
}

/// After a message, a pass waits until no more have come for this long…
const QUIET: Duration = Duration::from_millis(200);
/// …but no longer than this.
const GATHER_AT_MOST: Duration = Duration::from_secs(1);

/// When a message whose pass failed comes back: 5 s after its first receive, doubling
/// with each one, at most 15 min.
fn again_after(receives: u32) -> Duration {
    let doubled = Duration::from_secs(5).saturating_mul(1 << receives.saturating_sub(1).min(8));
    doubled.min(Duration::from_secs(15 * 60))
}

/// One pass: the messages it settles and what it covers.
#[derive(Debug, Default)]
struct Pass {
    messages: Vec<(Message, Wake)>,
    /// Destinations, by index.
    destinations: BTreeSet<usize>,
    /// The parameters' values, resolved again.
    values: bool,
}

/// What failed in a pass.
#[derive(Debug, Default)]
struct Failed {
    destinations: BTreeSet<usize>,
    values: bool,
}

impl Failed {
    /// Whether what `wake` asked for was done.
    fn settles(&self, wake: &Wake) -> bool {
        let trees = match wake.all {
            true => self.destinations.is_empty(),
            false => wake.named.is_disjoint(&self.destinations),
        };
        trees && !(wake.values && self.values)
    }
}

/// What one watch loop works with: the stage's own, and the polling interval.
pub(super) struct Watcher<'a> {
    pub state: &'a StateDir,
    pub syncer: &'a Syncer,
    pub specs: &'a [SyncSpec],
    pub args: &'a Settings,
    pub notifier: Notifier,
    pub interval: Duration,
}

/// The watch loop's state between passes, and its transitions; no I/O here.
struct Waiting {
    /// Messages that name something synced here, for the next pass.
    pending: Vec<(Message, Wake)>,
    /// What `status` shows: the interval, the queue, and whether it can be read.
    shown: Watch,
}

/// What taking in the queue's answers asks of the loop.
#[derive(Debug, Default, PartialEq, Eq)]
struct Taken {
    /// Messages that name nothing synced here: delete them.
    ignored: Vec<String>,
    /// The queue answered again after failing.
    recovered: bool,
    /// Each failed receive, to log.
    failures: Vec<String>,
    /// `shown` changed: write the record.
    record: bool,
}

impl Waiting {
    /// Takes in what the queue reader handed over; `names` are the references and imports
    /// an event may name; `now` stamps a new problem.
    fn take(
        &mut self,
        polled: Vec<Polled>,
        watched: &[Watched],
        names: &Names,
        now: &str,
    ) -> Taken {
        let mut taken = Taken::default();
        for p in polled {
            match p {
                Polled::Received(messages) => {
                    if self.shown.queue_problem.take().is_some() {
                        self.shown.since = None;
                        taken.recovered = true;
                        taken.record = true;
                    }
                    for m in messages {
                        match Wake::of(&m.body, watched, names) {
                            Some(wake) => self.pending.push((m, wake)),
                            None => taken.ignored.push(m.handle),
                        }
                    }
                }
                Polled::Failed(e) => {
                    if self.shown.queue_problem.is_none() {
                        self.shown.queue_problem = Some(e.to_string());
                        self.shown.since = Some(now.to_string());
                        taken.record = true;
                    }
                    taken.recovered = false;
                    taken.failures.push(e.to_string());
                }
            }
        }
        taken
    }

    /// The pass to run now, if one is due. The sync timer or a message for all covers
    /// every destination; the values' timer or a message naming a reference or an import
    /// covers the values; messages alone cover what they name.
    fn batch(&mut self, timer: bool, values_timer: bool, destinations: usize) -> Option<Pass> {
        if !timer && !values_timer && self.pending.is_empty() {
            return None;
        }
        let messages = std::mem::take(&mut self.pending);
        let chosen = match timer || messages.iter().any(|(_, w)| w.all) {
            true => (0..destinations).collect(),
            false => messages
                .iter()
                .flat_map(|(_, w)| w.named.iter().copied())
                .collect(),
        };
        let values = values_timer || messages.iter().any(|(_, w)| w.values);
        Some(Pass {
            messages,
            destinations: chosen,
            values,
        })
    }
}

/// The parameters' values in watch mode, for the configured sync only (a one-off
/// `--from/--to` watcher leaves them alone): the refresher, read when first needed.
struct Values<'a> {
    state: &'a StateDir,
    args: &'a Settings,
    notifier: Notifier,
    /// Whether this watcher resolves values again at all.
    enabled: bool,
    refresher: Option<Refresher>,
}

impl Values<'_> {
    /// What an event must name to wake the values: nothing when disabled, every parameter
    /// and secret until the parameters are read.
    fn names(&self) -> Names {
        match (&self.refresher, self.enabled) {
            (_, false) => Names::default(),
            (Some(r), true) => r.names().clone(),
            (None, true) => Names::everything(),
        }
    }

    /// Takes the parameters as read (at the start, in the background of the loop).
    fn loaded(&mut self, loaded: Result<Refresher>) {
        match loaded {
            Ok(refresher) => {
                match refresher.names().is_empty() {
                    true => tracing::info!(
                        "watch: the parameters have no reference or import: nothing to resolve again"
                    ),
                    false => tracing::info!(
                        "watch: the parameters' references and imports are known; events name them"
                    ),
                }
                self.refresher = Some(refresher);
            }
            Err(e) => tracing::warn!(
                "watch: cannot read the parameters to resolve them again (tried again when needed): {e}"
            ),
        }
    }

    /// Resolves the values again; true when a new set was swapped in. On error the
    /// values stay as they are.
    async fn refresh(&mut self) -> Result<bool> {
        if self.refresher.is_none() {
            // The first read failed: read again; its error is this pass's.
            let loaded = Refresher::load(self.state, &self.args.metadata, self.notifier).await?;
            self.loaded(Ok(loaded));
        }
        let refresher = self.refresher.as_ref().expect("read above");
        if refresher.names().is_empty() {
            return Ok(false);
        }
        refresher.refresh(self.state).await
    }
}

/// When the loop's two timers are next due: the sync's `interval`, and the values'
/// `bootstage.watch.secrets_interval` when set; no I/O here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timers {
    interval: Duration,
    due: Instant,
    values_every: Option<Duration>,
    values_due: Option<Instant>,
}

/// Which timers woke the loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fired {
    sync: bool,
    values: bool,
}

impl Timers {
    /// Both timers counting from `now`.
    fn new(now: Instant, interval: Duration, values_every: Option<Duration>) -> Timers {
        Timers {
            interval,
            due: now + interval,
            values_every,
            values_due: values_every.map(|e| now + e),
        }
    }

    /// A pass started at `now`: each timer that fired counts again from now; the other
    /// keeps its time.
    fn restart(&mut self, fired: Fired, now: Instant) {
        if fired.sync {
            self.due = now + self.interval;
        }
        if fired.values {
            self.values_due = self.values_every.map(|e| now + e);
        }
    }
}

/// What woke the loop: the timers that fired, and the queue's answers, gathered.
#[derive(Default)]
struct Woken {
    fired: Fired,
    polled: Vec<Polled>,
}

/// Whether an answer ends the gathering of a batch: a receive that waited and got nothing.
fn quiet(polled: &Polled) -> bool {
    matches!(polled, Polled::Received(m) if m.is_empty())
}

/// Adds to `polled` what the queue reader hands over until the queue has been quiet for
/// [`QUIET`] (or answered with nothing), for at most [`GATHER_AT_MOST`].
async fn gather(rx: &mut mpsc::Receiver<Polled>, polled: &mut Vec<Polled>) {
    let gathering = Instant::now() + GATHER_AT_MOST;
    while let Ok(Some(p)) =
        tokio::time::timeout_at(gathering.min(Instant::now() + QUIET), rx.recv()).await
    {
        let quiet = quiet(&p);
        polled.push(p);
        if quiet {
            break;
        }
    }
}

/// What a pass did, for its messages and what it announces.
#[derive(Debug, Default)]
struct Done {
    /// What changed, as `BOOTSTAGE_CHANGED` names it: the state dir when the values did
    /// (first), then each destination swapped in, in order.
    changed: Vec<String>,
    /// The values were resolved again and a new set swapped in.
    values_changed: bool,
    /// The reports of the destinations whose pass succeeded.
    reports: Vec<Report>,
    failed: Failed,
}

impl Done {
    /// Takes in the result of each destination of the pass (`destinations`, by index,
    /// with `specs` theirs, in the same order); returns the failures, to be told in order.
    fn tally(
        &mut self,
        destinations: &BTreeSet<usize>,
        specs: &[SyncSpec],
        results: Vec<std::result::Result<Report, SyncError>>,
    ) -> Vec<(String, SyncError)> {
        let mut failures = Vec::new();
        for ((&i, spec), result) in destinations.iter().zip(specs).zip(results) {
            match result {
                Ok(report) => {
                    if report.swapped {
                        self.changed.push(spec.to.display().to_string());
                    }
                    self.reports.push(report);
                }
                Err(e) => {
                    self.failed.destinations.insert(i);
                    failures.push((spec.to.display().to_string(), e));
                }
            }
        }
        failures
    }
}

/// What the end of a pass announces.
#[derive(Debug, PartialEq, Eq)]
struct Announce {
    /// The log line and READY=1's STATUS=.
    summary: String,
    /// The gate ran no hook, so sent no RELOADING=1: it is sent here.
    reloading: bool,
    /// What changed that the gate's hooks did not name: `--on-change` runs for it.
    unnamed: Vec<String>,
}

/// What a pass announces, given what it did and what the gate's hooks ran for (`hooked`,
/// naming `named`); nothing when nothing changed and no hook ran.
fn announce(done: &Done, hooked: bool, named: &[String]) -> Option<Announce> {
    if done.changed.is_empty() && !hooked {
        return None;
    }
    let mut summary = Vec::new();
    if done.reports.iter().any(|r| r.swapped) {
        summary.push(summarize(&done.reports));
    }
    if done.values_changed {
        summary.push("parameters changed".to_string());
    }
    if !done.failed.destinations.is_empty() {
        let n = done.failed.destinations.len();
        summary.push(format!("{n} destination(s) failed this pass"));
    }
    Some(Announce {
        summary: summary.join("; "),
        reloading: !hooked,
        unnamed: done
            .changed
            .iter()
            .filter(|c| !named.contains(c))
            .cloned()
            .collect(),
    })
}

/// The parameters as user-data gave them, being read beside the loop.
type Loading<'a> = Pin<Box<dyn Future<Output = Result<Refresher>> + 'a>>;

/// The watch loop: what it works with, and its state between passes.
struct Loop<'a> {
    state: &'a StateDir,
    syncer: &'a Syncer,
    specs: &'a [SyncSpec],
    args: &'a Settings,
    notifier: Notifier,
    listener: Option<Listener>,
    /// One per spec, in order: a message's indexes are the specs'.
    watched: Vec<Watched>,
    values: Values<'a>,
    loading: Option<Loading<'a>>,
    /// The interval, as the queue's problems say it.
    every: String,
    timers: Timers,
    waiting: Waiting,
}

/// Runs until SIGTERM: a pass every `interval`, the values resolved again every
/// `bootstage.watch.secrets_interval`, and a pass at once for each batch of messages on
/// the queue, if there is one.
pub(super) async fn watch(
    w: Watcher<'_>,
    listener: Option<Listener>,
    mut stop: Stop,
) -> Result<()> {
    let (state, notifier) = (w.state, w.notifier);
    let watchdog = notifier.watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        })
    });
    Loop::start(w, listener).run(&mut stop).await;
    record::remove(state);
    if let Some(task) = watchdog {
        task.abort();
    }
    Ok(())
}

impl<'a> Loop<'a> {
    /// The loop's state before its first wait; the watch record written.
    fn start(w: Watcher<'a>, listener: Option<Listener>) -> Loop<'a> {
        let Watcher {
            state,
            syncer,
            specs,
            args,
            notifier,
            interval,
        } = w;
        let watched = specs
            .iter()
            .map(|s| Watched {
                from: Location::parse(&s.from).ok(),
                from_url: s.from.clone(),
                to: s.to.clone(),
                release: s.release_parameter().map(str::to_string),
            })
            .collect();
        // The configured sync's parameters say how often values are resolved again (the
        // stage checked them before the first pass).
        let configured = args.from.is_none();
        let values_every = match configured {
            true => super::watch_settings(state)
                .ok()
                .and_then(|w| w.secrets_interval),
            false => None,
        };
        let values = Values {
            state,
            args,
            notifier,
            enabled: configured && (values_every.is_some() || listener.is_some()),
            refresher: None,
        };
        // The parameters as user-data gave them are read beside the loop, so a slow IMDS
        // holds up no pass; until then an event of either service counts as ours.
        let loading = values
            .enabled
            .then(|| Box::pin(Refresher::load(state, &args.metadata, notifier)) as Loading<'a>);
        let every = humantime::format_duration(interval).to_string();
        let timers = Timers::new(Instant::now(), interval, values_every);
        if let Some(e) = values_every {
            tracing::info!(
                every = %humantime::format_duration(e),
                "watch: resolving the parameters' references and imports again"
            );
        }
        let waiting = Waiting {
            pending: Vec::new(),
            shown: Watch {
                interval_secs: interval.as_secs(),
                queue: listener.as_ref().map(|l| l.queue.url().to_string()),
                queue_problem: None,
                since: None,
            },
        };
        record::write(state, &waiting.shown);
        Loop {
            state,
            syncer,
            specs,
            args,
            notifier,
            listener,
            watched,
            values,
            loading,
            every,
            timers,
            waiting,
        }
    }

    /// Until SIGTERM: wait, take in the queue's answers, run the pass due, if any.
    async fn run(mut self, stop: &mut Stop) {
        loop {
            let Some(woken) = self.wait(stop).await else {
                return;
            };
            let now = crate::state::status::timestamp(std::time::SystemTime::now());
            let names = self.values.names();
            let taken = self.waiting.take(woken.polled, &self.watched, &names, &now);
            self.taken(taken).await;
            let (fired, destinations) = (woken.fired, self.specs.len());
            let Some(pass) = self.waiting.batch(fired.sync, fired.values, destinations) else {
                continue;
            };
            self.timers.restart(fired, Instant::now());
            if !pass.messages.is_empty() {
                tracing::info!(
                    messages = pass.messages.len(),
                    destinations = pass.destinations.len(),
                    values = pass.values,
                    "watch: woken by the queue"
                );
            }
            if self.run_pass(pass, stop).await.is_none() {
                return;
            }
        }
    }

    /// Waits for a timer or the queue, taking in the parameters once read meanwhile;
    /// `None` on SIGTERM. Whatever else the queue hands over until it has been quiet for
    /// a moment joins the batch: a burst of events (a deploy writing many objects) makes
    /// one pass.
    async fn wait(&mut self, stop: &mut Stop) -> Option<Woken> {
        let Loop {
            listener,
            loading,
            values,
            timers,
            ..
        } = self;
        let mut woken = Woken::default();
        loop {
            let (due, values_due) = (timers.due, timers.values_due);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => woken.fired.sync = true,
                _ = async { tokio::time::sleep_until(values_due?).await; Some(()) }, if values_due.is_some() => woken.fired.values = true,
                loaded = async { loading.as_mut()?.await.into() }, if loading.is_some() => {
                    *loading = None;
                    if let Some(loaded) = loaded {
                        values.loaded(loaded);
                    }
                    continue;
                }
                Some(p) = async { listener.as_mut()?.rx.recv().await }, if listener.is_some() => woken.polled.push(p),
                _ = stop.requested() => return None,
            }
            break;
        }
        if let Some(l) = listener.as_mut()
            && !woken.polled.is_empty()
        {
            gather(&mut l.rx, &mut woken.polled).await;
        }
        Some(woken)
    }

    /// Does what taking in the queue's answers asked: the record written, the queue's
    /// health logged and shown, the messages that name nothing here deleted.
    async fn taken(&self, taken: Taken) {
        // The record first: whoever sees the STATUS= line and asks `status` finds it.
        if taken.record {
            record::write(self.state, &self.waiting.shown);
        }
        if taken.recovered {
            tracing::info!("watch: the queue can be read again");
            self.notifier.status("watching");
        }
        let every = &self.every;
        for e in &taken.failures {
            tracing::warn!("watch: cannot read the queue, polling every {every} meanwhile: {e}");
            self.notifier
                .status(&format!("queue unreadable, polling every {every}: {e}"));
        }
        if let Some(l) = &self.listener
            && !taken.ignored.is_empty()
        {
            tracing::debug!(
                messages = taken.ignored.len(),
                "watch: deleting messages that name nothing synced here"
            );
            if let Err(e) = l.queue.delete(&taken.ignored).await {
                tracing::warn!("watch: {e}");
            }
        }
    }

    /// One pass: the values, then the destinations it covers swapped in and gated, its
    /// messages settled, what changed announced; `None` on SIGTERM.
    async fn run_pass(&mut self, pass: Pass, stop: &mut Stop) -> Option<()> {
        let mut done = Done::default();
        if pass.values {
            self.refresh_values(&mut done, stop).await?;
        }
        let specs = self.specs;
        let subset: Vec<SyncSpec> = pass
            .destinations
            .iter()
            .map(|&i| specs[i].clone())
            .collect();
        let swapped = match subset.is_empty() {
            true => Vec::new(),
            false => tokio::select! {
                swapped = self.syncer.swap_all(&subset, self.notifier, false, true) => swapped,
                _ = stop.requested() => return None,
            },
        };
        // Every swap is done: the hook once, naming them and the values if they changed
        // (each swap recorded it owed), then the new releases' verifies, and the hook once
        // more for those swapped back. SIGTERM ends a hook or a verify at once; the marks
        // stay (hook owed, unverified) and the next start pays them.
        let gated = tokio::select! {
            gated = release::gate(swapped, &subset, &self.syncer.hooks, &done.changed) => gated,
            _ = stop.requested() => return None,
        };
        // Destinations are independent: one that failed keeps its old tree, and the hook
        // still runs for the others that swapped.
        for (to, e) in done.tally(&pass.destinations, &subset, gated.results) {
            tracing::error!("watch: {to} keeps its old tree, this pass failed: {e}");
            self.notifier
                .status(&format!("last pass failed for {to}: {e}"));
        }
        if let Some(l) = &self.listener {
            tokio::select! {
                _ = settle(&l.queue, pass.messages, &done.failed) => {}
                _ = stop.requested() => return None,
            }
        }
        let Some(announced) = announce(&done, gated.hooked, &gated.named) else {
            tracing::debug!("watch: no change");
            return Some(());
        };
        self.announce(announced, stop).await
    }

    /// Resolves the values again (once the parameters are read); a change or a failure
    /// goes into `done`. `None` on SIGTERM.
    async fn refresh_values(&mut self, done: &mut Done, stop: &mut Stop) -> Option<()> {
        if let Some(pending) = self.loading.take() {
            let loaded = tokio::select! {
                loaded = pending => loaded,
                _ = stop.requested() => return None,
            };
            self.values.loaded(loaded);
        }
        let refreshed = tokio::select! {
            refreshed = self.values.refresh() => refreshed,
            _ = stop.requested() => return None,
        };
        match refreshed {
            Ok(true) => {
                done.changed.push(self.state.root().display().to_string());
                done.values_changed = true;
            }
            Ok(false) => {}
            Err(e) => {
                done.failed.values = true;
                tracing::error!(
                    "watch: the parameters keep their values, resolving them again failed: {e}"
                );
                self.notifier
                    .status(&format!("resolving the parameters again failed: {e}"));
            }
        }
        Some(())
    }

    /// Says what a pass changed: the summary logged, RELOADING=1 unless the gate sent
    /// it, `--on-change` for what the gate's hooks did not name, READY=1. `None` on
    /// SIGTERM.
    async fn announce(&self, announced: Announce, stop: &mut Stop) -> Option<()> {
        let Announce {
            summary,
            reloading,
            unnamed,
        } = announced;
        tracing::info!("{summary}");
        if reloading {
            self.notifier.reloading();
        }
        if let (Some(hook), false) = (&self.args.on_change, unnamed.is_empty()) {
            let unnamed = unnamed.join(":");
            tokio::select! {
                _ = run_hook(hook, &unnamed, self.args.sync_timeout) => {}
                _ = stop.requested() => return None,
            }
        }
        self.notifier.ready(&summary);
        Some(())
    }
}

/// Deletes the messages whose work was done. Of those whose pass failed, one per
/// distinct request comes back later (a source that stays broken costs one retried pass,
/// not one per message); the rest are deleted.
async fn settle(queue: &Queue, batch: Vec<(Message, Wake)>, failed: &Failed) {
    let mut done = Vec::new();
    let mut kept: Vec<Wake> = Vec::new();
    for (m, wake) in batch {
        if failed.settles(&wake) || kept.contains(&wake) {
            done.push(m.handle);
            continue;
        }
        kept.push(wake);
        let after = again_after(m.receives);
        tracing::info!("watch: the pass a message asked for failed; it comes back in {after:?}");
        if let Err(e) = queue.retry_later(&m.handle, after).await {
            tracing::warn!("watch: {e}");
        }
    }
    if !done.is_empty()
        && let Err(e) = queue.delete(&done).await
    {
        tracing::warn!("watch: {e}; the messages come back and cost one more pass");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_message_comes_back_later_each_time() {
        let secs = |n| again_after(n).as_secs();
        assert_eq!(
            [secs(1), secs(2), secs(3), secs(8), secs(9), secs(50)],
            [5, 10, 20, 640, 900, 900]
        );
    }

    fn message(handle: &str, body: &str) -> Message {
        Message {
            handle: handle.into(),
            body: body.into(),
            receives: 1,
        }
    }

    fn failed(why: &str) -> Polled {
        Polled::Failed(QueueError::Failed {
            url: "https://sqs.local/q".into(),
            why: why.into(),
        })
    }

    fn waiting() -> Waiting {
        Waiting {
            pending: Vec::new(),
            shown: Watch {
                interval_secs: 600,
                queue: Some("https://sqs.local/q".into()),
                queue_problem: None,
                since: None,
            },
        }
    }

    #[test]
    fn the_queue_health_is_recorded_on_each_change_only() {
        let watched = [Watched {
            from: Location::parse("s3://b/a/").ok(),
            from_url: "s3://b/a/".into(),
            to: "/srv/a".into(),
            release: None,
        }];
        let mut w = waiting();
        // A failure is recorded once, with its time; each is logged.
        let names = Names::default();
        let taken = w.take(
            vec![failed("down"), failed("still down")],
            &watched,
            &names,
            "T1",
        );
        assert_eq!(
            taken,
            Taken {
                failures: vec![
                    "https://sqs.local/q: down".into(),
                    "https://sqs.local/q: still down".into()
                ],
                record: true,
                ..Taken::default()
            }
        );
        assert_eq!(
            (w.shown.queue_problem.as_deref(), w.shown.since.as_deref()),
            (Some("https://sqs.local/q: down"), Some("T1"))
        );
        let taken = w.take(vec![failed("down again")], &watched, &names, "T2");
        assert!(!taken.record);
        assert_eq!(w.shown.since.as_deref(), Some("T1"));
        // An answer clears it; messages that name nothing here are to be deleted.
        let answer = Polled::Received(vec![
            message("h1", r#"{"sync": ["/srv/a"]}"#),
            message("h2", "not json"),
        ]);
        let taken = w.take(vec![answer], &watched, &names, "T3");
        assert_eq!(
            taken,
            Taken {
                ignored: vec!["h2".into()],
                recovered: true,
                record: true,
                ..Taken::default()
            }
        );
        assert_eq!(
            (w.shown.queue_problem.as_ref(), w.shown.since.as_ref()),
            (None, None)
        );
        assert_eq!(w.pending.len(), 1);
    }

    #[test]
    fn a_pass_covers_what_its_messages_name_or_everything_on_the_timer() {
        let named = |i: &[usize]| Wake::some(i.iter().copied());
        let all: BTreeSet<usize> = (0..3).collect();
        let none = BTreeSet::new();
        // (sync timer, values timer, messages) → (destinations, values), or no pass.
        type Case = (bool, bool, Vec<Wake>, Option<(BTreeSet<usize>, bool)>);
        let cases: [Case; 9] = [
            (false, false, vec![], None),
            (true, false, vec![], Some((all.clone(), false))),
            (
                false,
                false,
                vec![named(&[1]), named(&[1, 2])],
                Some(([1, 2].into(), false)),
            ),
            (
                false,
                false,
                vec![named(&[1]), Wake::all()],
                Some((all.clone(), false)),
            ),
            (true, false, vec![named(&[0])], Some((all.clone(), false))),
            // The values' own timer: the values alone.
            (false, true, vec![], Some((none.clone(), true))),
            (true, true, vec![], Some((all.clone(), true))),
            // A Parameter Store or Secrets Manager event: the values, with what else came.
            (
                false,
                false,
                vec![Wake::values()],
                Some((none.clone(), true)),
            ),
            (
                false,
                false,
                vec![Wake::values(), named(&[2])],
                Some(([2].into(), true)),
            ),
        ];
        for (timer, values_timer, wakes, expected) in cases {
            let mut w = waiting();
            w.pending = wakes
                .into_iter()
                .map(|wake| (message("h", "{}"), wake))
                .collect();
            let pending = w.pending.len();
            let got = w.batch(timer, values_timer, 3);
            assert_eq!(
                got.as_ref().map(|p| (p.destinations.clone(), p.values)),
                expected,
                "timer {timer}, values timer {values_timer}"
            );
            // A pass takes every pending message with it.
            assert_eq!(got.map_or(pending, |p| p.messages.len()), pending);
            assert!(w.pending.is_empty());
        }
    }

    #[test]
    fn a_message_is_settled_when_what_it_named_did_not_fail() {
        let failed = |destinations: &[usize], values: bool| Failed {
            destinations: destinations.iter().copied().collect(),
            values,
        };
        let both = Wake {
            named: [1].into(),
            values: true,
            ..Wake::default()
        };
        let cases = [
            (Wake::all(), failed(&[], true), true),
            (Wake::all(), failed(&[2], false), false),
            (Wake::some([1]), failed(&[2], true), true),
            (Wake::some([1]), failed(&[1], false), false),
            (Wake::values(), failed(&[0, 1, 2], false), true),
            (Wake::values(), failed(&[], true), false),
            (both.clone(), failed(&[], false), true),
            (both.clone(), failed(&[], true), false),
            (both, failed(&[1], false), false),
        ];
        for (wake, failed, settled) in cases {
            assert_eq!(failed.settles(&wake), settled, "{wake:?} {failed:?}");
        }
    }

    /// Events are matched against the references' names once read; until then every
    /// Parameter Store or Secrets Manager event counts, and a watcher that does not
    /// resolve values (a one-off `--from/--to`) deletes them as naming nothing.
    #[test]
    fn eventbridge_events_wake_the_values_by_their_names() {
        let event = include_str!("../../../tests/fixtures/eventbridge/parameter-store-change.json");
        let other = event.replace("/rotation/db-password", "/rotation/unrelated");
        let ours = {
            let mut n = Names::default();
            n.add_parameter("/rotation/db-password");
            n
        };
        for (names, body, woken) in [
            (&ours, event, true),
            (&ours, other.as_str(), false),
            (&Names::everything(), other.as_str(), true),
            (&Names::default(), event, false),
        ] {
            let mut w = waiting();
            let taken = w.take(
                vec![Polled::Received(vec![message("h", body)])],
                &[],
                names,
                "T",
            );
            assert_eq!(taken.ignored.is_empty(), woken);
            assert_eq!(w.pending.len(), woken as usize);
            if woken {
                assert_eq!(w.pending[0].1, Wake::values());
            }
        }
    }
    #[test]
    fn each_timer_counts_again_from_the_pass_it_started() {
        let t0 = Instant::now();
        let (interval, values) = (Duration::from_secs(600), Duration::from_secs(3600));
        let later = t0 + Duration::from_secs(700);
        let fired = |sync, values| Fired { sync, values };
        // (values timer, what fired) → (due, values due) after a pass started `later`.
        type Case = (Option<Duration>, Fired, (Instant, Option<Instant>));
        let cases: [Case; 6] = [
            (
                Some(values),
                fired(false, false),
                (t0 + interval, Some(t0 + values)),
            ),
            (
                Some(values),
                fired(true, false),
                (later + interval, Some(t0 + values)),
            ),
            (
                Some(values),
                fired(false, true),
                (t0 + interval, Some(later + values)),
            ),
            (
                Some(values),
                fired(true, true),
                (later + interval, Some(later + values)),
            ),
            (None, fired(true, false), (later + interval, None)),
            (None, fired(false, true), (t0 + interval, None)),
        ];
        for (every, fired, expected) in cases {
            let mut timers = Timers::new(t0, interval, every);
            assert_eq!(
                (timers.due, timers.values_due),
                (t0 + interval, every.map(|e| t0 + e))
            );
            timers.restart(fired, later);
            assert_eq!(
                (timers.due, timers.values_due),
                expected,
                "{every:?} {fired:?}"
            );
        }
    }

    /// A batch takes what comes within 200 ms of the last answer, for at most 1 s, and
    /// ends at an answer that brought nothing (the queue is quiet).
    #[tokio::test(start_paused = true)]
    async fn a_batch_gathers_until_the_queue_is_quiet_or_a_second_passed() {
        // (each answer: ms after the one before, whether it brought nothing) → how many
        // join the batch.
        let some = |ms| (ms, false);
        let cases: [(Vec<(u64, bool)>, usize); 6] = [
            (vec![], 0),
            (vec![some(100), some(100), some(100)], 3),
            (vec![some(100), (100, true), some(10)], 2),
            (vec![some(100), some(250)], 1),
            (vec![some(250)], 0),
            (vec![some(150); 10], 6),
        ];
        for (answers, joined) in cases {
            let (tx, mut rx) = mpsc::channel(16);
            let script = answers.clone();
            let sender = tokio::spawn(async move {
                for (ms, empty) in script {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let messages = match empty {
                        true => vec![],
                        false => vec![message("h", "{}")],
                    };
                    let _ = tx.send(Polled::Received(messages)).await;
                }
            });
            let mut polled = Vec::new();
            gather(&mut rx, &mut polled).await;
            assert_eq!(polled.len(), joined, "{answers:?}");
            sender.abort();
        }
    }

    fn report(objects: usize, swapped: bool) -> Report {
        Report {
            objects,
            downloaded: usize::from(swapped),
            swapped,
            ..Report::default()
        }
    }

    #[test]
    fn a_pass_is_tallied_by_destination() {
        let specs: Vec<SyncSpec> = ["/srv/a", "/srv/b", "/srv/c"]
            .iter()
            .map(|to| SyncSpec::plain("s3://b/p/", std::path::Path::new(to)))
            .collect();
        let failure = || Err(SyncError::Settings("down".into()));
        // (indexes, results, what was changed already) → (changed, reports, failed,
        // failures told).
        type Case = (
            Vec<usize>,
            Vec<std::result::Result<Report, SyncError>>,
            Vec<&'static str>,
            (Vec<&'static str>, usize, Vec<usize>, Vec<&'static str>),
        );
        let cases: [Case; 5] = [
            (vec![], vec![], vec![], (vec![], 0, vec![], vec![])),
            (
                vec![0, 1, 2],
                vec![
                    Ok(report(3, true)),
                    Ok(report(1, false)),
                    Ok(report(2, true)),
                ],
                vec![],
                (vec!["/srv/a", "/srv/c"], 3, vec![], vec![]),
            ),
            // The indexes are the specs' in the whole list, not in the pass's subset.
            (
                vec![1, 2],
                vec![failure(), Ok(report(2, true))],
                vec!["/state"],
                (vec!["/state", "/srv/c"], 1, vec![1], vec!["/srv/b"]),
            ),
            (
                vec![0, 2],
                vec![failure(), failure()],
                vec![],
                (vec![], 0, vec![0, 2], vec!["/srv/a", "/srv/c"]),
            ),
            (
                vec![2],
                vec![Ok(report(0, false))],
                vec!["/state"],
                (vec!["/state"], 1, vec![], vec![]),
            ),
        ];
        for (indexes, results, before, (changed, reports, failed, told)) in cases {
            let destinations: BTreeSet<usize> = indexes.iter().copied().collect();
            let subset: Vec<SyncSpec> = indexes.iter().map(|&i| specs[i].clone()).collect();
            let mut done = Done {
                changed: before.iter().map(|c| c.to_string()).collect(),
                ..Done::default()
            };
            let failures = done.tally(&destinations, &subset, results);
            assert_eq!(done.changed, changed, "{indexes:?}");
            assert_eq!(done.reports.len(), reports, "{indexes:?}");
            assert_eq!(
                done.failed.destinations,
                failed.into_iter().collect::<BTreeSet<_>>()
            );
            let told_about: Vec<&str> = failures.iter().map(|(to, _)| to.as_str()).collect();
            assert_eq!(told_about, told, "{indexes:?}");
            assert!(
                failures
                    .iter()
                    .all(|(_, e)| e.to_string() == "sync settings: down")
            );
        }
    }

    #[test]
    fn a_pass_announces_what_changed_and_hooks_what_the_gate_did_not_name() {
        let done = |changed: &[&str], values: bool, reports: Vec<Report>, failed: &[usize]| Done {
            changed: changed.iter().map(|c| c.to_string()).collect(),
            values_changed: values,
            reports,
            failed: Failed {
                destinations: failed.iter().copied().collect(),
                values: false,
            },
        };
        let announced = |summary: &str, reloading, unnamed: &[&str]| {
            Some(Announce {
                summary: summary.into(),
                reloading,
                unnamed: unnamed.iter().map(|c| c.to_string()).collect(),
            })
        };
        let synced = "synced 2 destination(s): 4 objects, 1 downloaded, 1 swapped in";
        // (what the pass did, the gate hooked, naming) → what is announced.
        let cases = [
            (
                done(&[], false, vec![report(1, false)], &[]),
                false,
                vec![],
                None,
            ),
            (done(&[], false, vec![], &[0]), false, vec![], None),
            // A hook owed from before ran: READY=1 follows, with nothing to say.
            (
                done(&[], false, vec![], &[]),
                true,
                vec![],
                announced("", false, &[]),
            ),
            (
                done(&["/state"], true, vec![], &[]),
                false,
                vec![],
                announced("parameters changed", true, &["/state"]),
            ),
            (
                done(&["/state"], true, vec![], &[1]),
                true,
                vec!["/state"],
                announced(
                    "parameters changed; 1 destination(s) failed this pass",
                    false,
                    &[],
                ),
            ),
            (
                done(
                    &["/srv/a"],
                    false,
                    vec![report(3, true), report(1, false)],
                    &[],
                ),
                true,
                vec!["/srv/a"],
                announced(synced, false, &[]),
            ),
            (
                done(
                    &["/state", "/srv/a"],
                    true,
                    vec![report(3, true), report(1, false)],
                    &[2],
                ),
                false,
                vec![],
                announced(
                    &format!("{synced}; parameters changed; 1 destination(s) failed this pass"),
                    true,
                    &["/state", "/srv/a"],
                ),
            ),
            // The gate named the destinations; only the values are left for the hook.
            (
                done(
                    &["/state", "/srv/a"],
                    true,
                    vec![report(3, true), report(1, false)],
                    &[],
                ),
                true,
                vec!["/srv/a"],
                announced(&format!("{synced}; parameters changed"), false, &["/state"]),
            ),
        ];
        for (done, hooked, named, expected) in cases {
            let named: Vec<String> = named.iter().map(|n: &&str| n.to_string()).collect();
            assert_eq!(
                announce(&done, hooked, &named),
                expected,
                "{done:?} {hooked}"
            );
        }
    }
}
