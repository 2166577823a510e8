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
//!
//! Here: the loop (`Loop`: its waits and I/O) and what it decides about timers, a pass's
//! results and what it announces; the queue's side (the reader, what its answers change,
//! the messages after a pass) is `watch/queue.rs`.

mod queue;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use super::release::{self, run_hook};
use super::{Report, Settings, SyncError, SyncSpec, Syncer, summarize};
use crate::base::notify::Notifier;
use crate::base::stop::Stop;
use crate::events::{Names, Watched};
use crate::stage::error::Result;
use crate::stage::metadata::Refresher;
use crate::state::StateDir;
use crate::state::watch::{self as record, Watch};
use crate::sync::source::Location;
use queue::{Failed, Pass, Polled, Taken, Waiting, gather, settle};
pub(super) use queue::{Listener, listen};

/// What one watch loop works with: the stage's own, and the polling interval.
pub(super) struct Watcher<'a> {
    pub state: &'a StateDir,
    pub syncer: &'a Syncer,
    pub specs: &'a [SyncSpec],
    pub args: &'a Settings,
    pub notifier: Notifier,
    pub interval: Duration,
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
    if summary.is_empty() {
        // Nothing changed this pass: the gate ran the hook an earlier one owed.
        summary.push("--on-change ran, owed by an earlier pass".to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

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
            // A hook owed from before ran: READY=1 follows, saying so.
            (
                done(&[], false, vec![], &[]),
                true,
                vec![],
                announced("--on-change ran, owed by an earlier pass", false, &[]),
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
