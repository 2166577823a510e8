//! The queue side of watch mode: the reader that long-polls the SQS queue beside the
//! loop (`listen`), what its answers change (`Waiting`: the messages kept for the next
//! pass, which destinations that pass covers, the queue's health for `status`), how a
//! burst of answers is gathered into one batch (`gather`), and what becomes of each
//! message after its pass (`settle`: deleted, or made visible again later).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::events::{Message, Names, Queue, QueueError, Wake, Watched};
use crate::state::watch::Watch;

/// What the queue reader hands the watch loop.
pub(super) enum Polled {
    /// A receive answered (with no messages, when none came in 20 s).
    Received(Vec<Message>),
    Failed(QueueError),
}

/// The queue reader, running.
pub(in crate::stage::s3sync) struct Listener {
    pub(super) queue: Arc<Queue>,
    pub(super) rx: mpsc::Receiver<Polled>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts reading `queue`; returns once the first receive is on its way. Each message is
/// hidden from other receives for `hidden` (longer than a pass may take).
pub(in crate::stage::s3sync) async fn listen(queue: Queue, hidden: Duration) -> Listener {
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
pub(super) struct Pass {
    pub(super) messages: Vec<(Message, Wake)>,
    /// Destinations, by index.
    pub(super) destinations: BTreeSet<usize>,
    /// The parameters' values, resolved again.
    pub(super) values: bool,
}

/// What failed in a pass.
#[derive(Debug, Default)]
pub(super) struct Failed {
    pub(super) destinations: BTreeSet<usize>,
    pub(super) values: bool,
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

/// The watch loop's state between passes, and its transitions; no I/O here.
pub(super) struct Waiting {
    /// Messages that name something synced here, for the next pass.
    pub(super) pending: Vec<(Message, Wake)>,
    /// What `status` shows: the interval, the queue, and whether it can be read.
    pub(super) shown: Watch,
}

/// What taking in the queue's answers asks of the loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Taken {
    /// Messages that name nothing synced here: delete them.
    pub(super) ignored: Vec<String>,
    /// The queue answered again after failing.
    pub(super) recovered: bool,
    /// Each failed receive, to log.
    pub(super) failures: Vec<String>,
    /// `shown` changed: write the record.
    pub(super) record: bool,
}

impl Waiting {
    /// Takes in what the queue reader handed over; `names` are the references and imports
    /// an event may name; `now` stamps a new problem.
    pub(super) fn take(
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
    pub(super) fn batch(
        &mut self,
        timer: bool,
        values_timer: bool,
        destinations: usize,
    ) -> Option<Pass> {
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

/// Whether an answer ends the gathering of a batch: a receive that waited and got nothing.
fn quiet(polled: &Polled) -> bool {
    matches!(polled, Polled::Received(m) if m.is_empty())
}

/// Adds to `polled` what the queue reader hands over until the queue has been quiet for
/// [`QUIET`] (or answered with nothing), for at most [`GATHER_AT_MOST`].
pub(super) async fn gather(rx: &mut mpsc::Receiver<Polled>, polled: &mut Vec<Polled>) {
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

/// Deletes the messages whose work was done. Of those whose pass failed, one per
/// distinct request comes back later (a source that stays broken costs one retried pass,
/// not one per message); the rest are deleted.
pub(super) async fn settle(queue: &Queue, batch: Vec<(Message, Wake)>, failed: &Failed) {
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
    use crate::sync::source::Location;

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
        let event =
            include_str!("../../../../tests/fixtures/eventbridge/parameter-store-change.json");
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
}
