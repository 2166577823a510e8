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
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::release::{self, run_hook};
use super::{Settings, SyncSpec, Syncer, summarize};
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

/// Runs until SIGTERM: a pass every `interval`, the values resolved again every
/// `bootstage.watch.secrets_interval`, and a pass at once for each batch of messages on
/// the queue, if there is one.
pub(super) async fn watch(
    w: Watcher<'_>,
    mut listener: Option<Listener>,
    mut stop: Stop,
) -> Result<()> {
    let Watcher {
        state,
        syncer,
        specs,
        args,
        notifier,
        interval,
    } = w;
    let watchdog = notifier.watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        })
    });
    // One per spec, in order: a message's indexes are the specs'.
    let watched: Vec<Watched> = specs
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
    let mut values = Values {
        state,
        args,
        notifier,
        enabled: configured && (values_every.is_some() || listener.is_some()),
        refresher: None,
    };
    // The parameters as user-data gave them are read beside the loop, so a slow IMDS
    // holds up no pass; until then an event of either service counts as ours.
    let mut loading = values
        .enabled
        .then(|| Box::pin(Refresher::load(state, &args.metadata, notifier)));
    let every = humantime::format_duration(interval).to_string();
    let mut due = Instant::now() + interval;
    let mut values_due = values_every.map(|e| Instant::now() + e);
    if let Some(e) = values_every {
        tracing::info!(
            every = %humantime::format_duration(e),
            "watch: resolving the parameters' references and imports again"
        );
    }
    let mut waiting = Waiting {
        pending: Vec::new(),
        shown: Watch {
            interval_secs: interval.as_secs(),
            queue: listener.as_ref().map(|l| l.queue.url().to_string()),
            queue_problem: None,
            since: None,
        },
    };
    record::write(state, &waiting.shown);
    loop {
        let mut polled = Vec::new();
        let mut timer = false;
        let mut values_timer = false;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => timer = true,
            _ = async { tokio::time::sleep_until(values_due?).await; Some(()) }, if values_due.is_some() => values_timer = true,
            loaded = async { loading.as_mut()?.await.into() }, if loading.is_some() => {
                loading = None;
                if let Some(loaded) = loaded {
                    values.loaded(loaded);
                }
                continue;
            }
            Some(p) = async { listener.as_mut()?.rx.recv().await }, if listener.is_some() => polled.push(p),
            _ = stop.requested() => break,
        }
        // Whatever else arrives until the queue has been quiet for a moment joins this
        // pass: a burst of events (a deploy writing many objects) makes one pass.
        if let Some(l) = listener.as_mut()
            && !polled.is_empty()
        {
            let gathering = Instant::now() + GATHER_AT_MOST;
            while let Ok(Some(p)) =
                tokio::time::timeout_at(gathering.min(Instant::now() + QUIET), l.rx.recv()).await
            {
                let quiet = matches!(&p, Polled::Received(m) if m.is_empty());
                polled.push(p);
                if quiet {
                    break;
                }
            }
        }
        let now = crate::state::status::timestamp(std::time::SystemTime::now());
        let taken = waiting.take(polled, &watched, &values.names(), &now);
        // The record first: whoever sees the STATUS= line and asks `status` finds it.
        if taken.record {
            record::write(state, &waiting.shown);
        }
        if taken.recovered {
            tracing::info!("watch: the queue can be read again");
            notifier.status("watching");
        }
        for e in &taken.failures {
            tracing::warn!("watch: cannot read the queue, polling every {every} meanwhile: {e}");
            notifier.status(&format!("queue unreadable, polling every {every}: {e}"));
        }
        if let Some(l) = &listener
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
        let Some(pass) = waiting.batch(timer, values_timer, specs.len()) else {
            continue;
        };
        if timer {
            due = Instant::now() + interval;
        }
        if values_timer {
            values_due = values_every.map(|e| Instant::now() + e);
        }
        if !pass.messages.is_empty() {
            tracing::info!(
                messages = pass.messages.len(),
                destinations = pass.destinations.len(),
                values = pass.values,
                "watch: woken by the queue"
            );
        }
        let mut changed = Vec::new();
        let mut failed = Failed::default();
        let mut summary = Vec::new();
        if pass.values {
            if let Some(pending) = loading.take() {
                let loaded = tokio::select! {
                    loaded = pending => loaded,
                    _ = stop.requested() => break,
                };
                values.loaded(loaded);
            }
            let refreshed = tokio::select! {
                refreshed = values.refresh() => refreshed,
                _ = stop.requested() => break,
            };
            match refreshed {
                Ok(true) => {
                    changed.push(state.root().display().to_string());
                    summary.push("parameters changed".to_string());
                }
                Ok(false) => {}
                Err(e) => {
                    failed.values = true;
                    tracing::error!(
                        "watch: the parameters keep their values, resolving them again failed: {e}"
                    );
                    notifier.status(&format!("resolving the parameters again failed: {e}"));
                }
            }
        }
        let subset: Vec<SyncSpec> = pass
            .destinations
            .iter()
            .map(|&i| specs[i].clone())
            .collect();
        let swapped = match subset.is_empty() {
            true => Vec::new(),
            false => tokio::select! {
                swapped = syncer.swap_all(&subset, notifier, false, true) => swapped,
                _ = stop.requested() => break,
            },
        };
        // Every swap is done: the hook once, naming them and the values if they changed
        // (each swap recorded it owed), then the new releases' verifies, and the hook once
        // more for those swapped back. SIGTERM ends a hook or a verify at once; the marks
        // stay (hook owed, unverified) and the next start pays them.
        let gated = tokio::select! {
            gated = release::gate(swapped, &subset, &syncer.hooks, &changed) => gated,
            _ = stop.requested() => break,
        };
        let results = gated.results;
        // Destinations are independent: one that failed keeps its old tree, and the hook
        // still runs for the others that swapped.
        let mut reports = Vec::new();
        for ((&i, spec), result) in pass.destinations.iter().zip(&subset).zip(results) {
            match result {
                Ok(report) => {
                    if report.swapped {
                        changed.push(spec.to.display().to_string());
                    }
                    reports.push(report);
                }
                Err(e) => {
                    failed.destinations.insert(i);
                    tracing::error!(
                        "watch: {} keeps its old tree, this pass failed: {e}",
                        spec.to.display()
                    );
                    notifier.status(&format!("last pass failed for {}: {e}", spec.to.display()));
                }
            }
        }
        if let Some(l) = &listener {
            tokio::select! {
                _ = settle(&l.queue, pass.messages, &failed) => {}
                _ = stop.requested() => break,
            }
        }
        if changed.is_empty() && !gated.hooked {
            tracing::debug!("watch: no change");
            continue;
        }
        if reports.iter().any(|r| r.swapped) {
            summary.insert(0, summarize(&reports));
        }
        if !failed.destinations.is_empty() {
            let n = failed.destinations.len();
            summary.push(format!("{n} destination(s) failed this pass"));
        }
        let summary = summary.join("; ");
        tracing::info!("{summary}");
        // The gate ran the hook for what it named (every swap, and the values); what it
        // did not name, if anything, is announced here.
        if !gated.hooked {
            notifier.reloading();
        }
        let unnamed: Vec<&str> = changed
            .iter()
            .filter(|c| !gated.named.contains(c))
            .map(String::as_str)
            .collect();
        if let (Some(hook), false) = (&args.on_change, unnamed.is_empty()) {
            let unnamed = unnamed.join(":");
            tokio::select! {
                _ = run_hook(hook, &unnamed, args.sync_timeout) => {}
                _ = stop.requested() => break,
            }
        }
        notifier.ready(&summary);
    }
    record::remove(state);
    if let Some(task) = watchdog {
        task.abort();
    }
    Ok(())
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
}
