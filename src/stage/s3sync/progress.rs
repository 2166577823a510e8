//! What a sync is doing, as it does it: per-destination counters, the `STATUS=` lines
//! systemd shows, and a progress bar when stderr is a terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::base::notify::Notifier;

/// One destination's counts in the current pass.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) total: AtomicU64,
    pub(super) done: AtomicU64,
    /// Downloads S3 answered 503 SlowDown (or 429) in this sync.
    pub(super) throttled: AtomicU64,
}

/// Counters behind the `STATUS=` lines, and the progress bar when stderr is a terminal.
pub(super) struct Progress {
    pub(super) dests: Vec<Counters>,
    pub(super) bytes: AtomicU64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(super) fn new(destinations: usize) -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} objects, {msg} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(0).with_style(style)
        });
        let dests = (0..destinations).map(|_| Counters::default()).collect();
        Progress {
            dests,
            bytes: AtomicU64::new(0),
            bar,
        }
    }

    pub(super) async fn report(self: Arc<Self>, notifier: Notifier) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let sum = |f: fn(&Counters) -> &AtomicU64| {
                self.dests
                    .iter()
                    .map(|c| f(c).load(Ordering::Relaxed))
                    .sum::<u64>()
            };
            let (done, total) = (sum(|c| &c.done), sum(|c| &c.total));
            let mb = format!("{:.0} MB", self.bytes.load(Ordering::Relaxed) as f64 / 1e6);
            if let Some(bar) = &self.bar {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(mb.clone());
            }
            notifier.status(&format!("syncing: {done}/{total} objects, {mb}"));
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
