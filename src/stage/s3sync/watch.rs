//! Watch mode: after READY, keep every destination synced until SIGTERM.
//!
//! Two things start a pass:
//! - the interval (`--watch`, or `bootstage.watch.interval`): a pass over every
//!   destination, one LIST each (one conditional GET for a bundle) when nothing changed.
//!   With a queue this is the safety net, for a message that was lost or never sent;
//! - a message on the SQS queue (`--sqs`, or `bootstage.watch.sqs`) that names a synced
//!   source or destination (`events/`): a pass over what it names, at once. A task
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
//! polling goes on and the queue is tried again, 1 s doubling to 60 s. After a change is
//! swapped in, the `--on-change` hook runs between RELOADING=1 and READY=1. A failed
//! pass keeps the old tree; SIGTERM ends any wait or pass at once (exit 0, no staging dir
//! left).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Settings, SyncSpec, Syncer, summarize};
use crate::base::child;
use crate::base::notify::Notifier;
use crate::base::stop::Stop;
use crate::events::{Message, Queue, QueueError, Wake, Watched};
use crate::stage::error::Result;
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

/// The messages a pass settles, and the destinations (by index) it covers.
type Batch = (Vec<(Message, Wake)>, BTreeSet<usize>);

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
    /// Takes in what the queue reader handed over; `now` stamps a new problem.
    fn take(&mut self, polled: Vec<Polled>, watched: &[Watched], now: &str) -> Taken {
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
                        match Wake::of(&m.body, watched) {
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

    /// The pass to run now, if one is due: the messages it settles and the destinations
    /// (by index) it covers. The timer or a message for all covers every destination;
    /// messages alone cover what they name.
    fn batch(&mut self, timer: bool, destinations: usize) -> Option<Batch> {
        if !timer && self.pending.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.pending);
        let chosen = match timer || batch.iter().any(|(_, w)| *w == Wake::All) {
            true => (0..destinations).collect(),
            false => batch
                .iter()
                .flat_map(|(_, w)| match w {
                    Wake::Some(named) => named.clone(),
                    Wake::All => BTreeSet::new(),
                })
                .collect(),
        };
        Some((batch, chosen))
    }
}

/// Runs until SIGTERM: a pass every `interval`, and one at once for each batch of
/// messages on the queue, if there is one.
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
    let watched: Vec<Watched> = specs
        .iter()
        .filter_map(|s| {
            Some(Watched {
                from: Location::parse(&s.from).ok()?,
                from_url: s.from.clone(),
                to: s.to.clone(),
            })
        })
        .collect();
    let every = humantime::format_duration(interval).to_string();
    let mut due = Instant::now() + interval;
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
        tokio::select! {
            _ = tokio::time::sleep_until(due) => timer = true,
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
        let taken = waiting.take(polled, &watched, &now);
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
        let Some((batch, chosen)) = waiting.batch(timer, specs.len()) else {
            continue;
        };
        if timer {
            due = Instant::now() + interval;
        }
        if !batch.is_empty() {
            tracing::info!(
                messages = batch.len(),
                destinations = chosen.len(),
                "watch: woken by the queue"
            );
        }
        let subset: Vec<SyncSpec> = chosen.iter().map(|&i| specs[i].clone()).collect();
        let results = tokio::select! {
            results = syncer.sync_all(&subset, notifier, false) => results,
            _ = stop.requested() => break,
        };
        // Destinations are independent: one that failed keeps its old tree, and the hook
        // still runs for the others that swapped.
        let mut reports = Vec::new();
        let mut changed = Vec::new();
        let mut failed = BTreeSet::new();
        for ((&i, spec), result) in chosen.iter().zip(&subset).zip(results) {
            match result {
                Ok(report) => {
                    if report.swapped {
                        changed.push(spec.to.display().to_string());
                    }
                    reports.push(report);
                }
                Err(e) => {
                    failed.insert(i);
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
                _ = settle(&l.queue, batch, &failed) => {}
                _ = stop.requested() => break,
            }
        }
        if changed.is_empty() {
            tracing::debug!("watch: no change");
            continue;
        }
        let summary = summarize(&reports);
        tracing::info!("{summary}");
        notifier.reloading();
        if let Some(hook) = &args.on_change {
            let changed = changed.join(":");
            tokio::select! {
                _ = run_hook(hook, &changed, args.sync_timeout) => {}
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

/// Deletes the messages whose destinations all synced. Of those whose pass failed, one
/// per distinct request comes back later (a source that stays broken costs one retried
/// pass, not one per message); the rest are deleted.
async fn settle(queue: &Queue, batch: Vec<(Message, Wake)>, failed: &BTreeSet<usize>) {
    let mut done = Vec::new();
    let mut kept: Vec<Wake> = Vec::new();
    for (m, wake) in batch {
        let ok = match &wake {
            Wake::All => failed.is_empty(),
            Wake::Some(named) => named.is_disjoint(failed),
        };
        if ok || kept.contains(&wake) {
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

/// Runs the change hook with `/bin/sh -c`, bounded; its failure is logged, never fatal.
async fn run_hook(hook: &str, changed: &str, limit: Duration) {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(hook)
        .env("BOOTSTAGE_CHANGED", changed);
    match child::run_bounded(command, limit).await {
        Ok(status) if status.success() => tracing::info!("--on-change hook done"),
        Ok(status) => tracing::error!("--on-change hook {}", child::describe(status)),
        Err(e) => tracing::error!("--on-change hook: {e}"),
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
            from: Location::parse("s3://b/a/").unwrap(),
            from_url: "s3://b/a/".into(),
            to: "/srv/a".into(),
        }];
        let mut w = waiting();
        // A failure is recorded once, with its time; each is logged.
        let taken = w.take(vec![failed("down"), failed("still down")], &watched, "T1");
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
        let taken = w.take(vec![failed("down again")], &watched, "T2");
        assert!(!taken.record);
        assert_eq!(w.shown.since.as_deref(), Some("T1"));
        // An answer clears it; messages that name nothing here are to be deleted.
        let answer = Polled::Received(vec![
            message("h1", r#"{"sync": ["/srv/a"]}"#),
            message("h2", "not json"),
        ]);
        let taken = w.take(vec![answer], &watched, "T3");
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
        let named = |i: &[usize]| Wake::Some(i.iter().copied().collect());
        let all: BTreeSet<usize> = (0..3).collect();
        let cases: [(bool, Vec<Wake>, Option<BTreeSet<usize>>); 5] = [
            (false, vec![], None),
            (true, vec![], Some(all.clone())),
            (
                false,
                vec![named(&[1]), named(&[1, 2])],
                Some([1, 2].into()),
            ),
            (false, vec![named(&[1]), Wake::All], Some(all.clone())),
            (true, vec![named(&[0])], Some(all.clone())),
        ];
        for (timer, wakes, expected) in cases {
            let mut w = waiting();
            w.pending = wakes
                .into_iter()
                .map(|wake| (message("h", "{}"), wake))
                .collect();
            let pending = w.pending.len();
            let got = w.batch(timer, 3);
            assert_eq!(
                got.as_ref().map(|(_, chosen)| chosen.clone()),
                expected,
                "timer {timer}"
            );
            // A pass takes every pending message with it.
            assert_eq!(got.map_or(pending, |(batch, _)| batch.len()), pending);
            assert!(w.pending.is_empty());
        }
    }
}
