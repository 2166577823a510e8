//! The retry policy: how long bootstage waits between attempts, and when it stops.
//!
//! Every wait in bootstage ends at one overall [`Deadline`] (`--timeout`), chosen to fit
//! inside the unit's `TimeoutStartSec=`, so nothing can hang a boot. Between attempts we
//! sleep for a jittered exponential backoff from `backon`, never less than what the error
//! itself asks for (an HTTP `Retry-After`). The last sleep is shortened so one final
//! attempt still fits before the deadline; we give up, returning the last error, when no
//! attempt fits any more or when the server asks us to wait past the deadline.
//!
//! The policies:
//! - [`POLL`]: waiting for something that is about to appear (user-data early in boot).
//!   10 ms doubling to 40 ms, plus up to 100 % jitter: sleeps settle in 40–80 ms, so a
//!   value that appears is seen within ~0.08 s (median ~30 ms) while the poll rate stays
//!   at most ~25/s (IMDS is rate-limited per instance, at about 1,000 packets/s).
//! - [`BACKOFF`]: something is failing (connection refused, 5xx). 100 ms doubling to 1 s,
//!   plus jitter.
//! - [`THROTTLED`]: an AWS API answering "slow down" (SSM, Secrets Manager, S3's 503
//!   SlowDown). 250 ms doubling to 8 s, plus jitter; for one download of many,
//!   [`Policy::full_jitter`].
//! - [`NOTICE`]: a webhook that is down. 1 s doubling to 8 s, plus jitter: about six
//!   attempts in the default 30 s, so a struggling receiver is not hammered.

use std::time::Duration;

use tokio::time::Instant;

use backon::{ExponentialBuilder, Retryable};

/// A point in time after which no more waiting happens.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    start: Instant,
    at: Instant,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        let start = Instant::now();
        Deadline {
            start,
            at: start + budget,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn budget(&self) -> Duration {
        self.at - self.start
    }
}

/// The least time worth starting one more attempt with.
pub const LAST_ATTEMPT: Duration = Duration::from_millis(50);

/// Exponential backoff bounds; the growth factor is 2 and jitter is always on.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub first: Duration,
    pub cap: Duration,
}

pub const POLL: Policy = Policy {
    first: Duration::from_millis(10),
    cap: Duration::from_millis(40),
};

pub const BACKOFF: Policy = Policy {
    first: Duration::from_millis(100),
    cap: Duration::from_secs(1),
};

/// An AWS API that throttles (SSM's 40 TPS shared by a whole account): 250 ms doubling
/// to 8 s, plus jitter, so a fleet booting together spreads out instead of retrying in
/// step.
pub const THROTTLED: Policy = Policy {
    first: Duration::from_millis(250),
    cap: Duration::from_secs(8),
};

impl Policy {
    /// Waits between attempts, without end, as AWS's "full jitter": each drawn uniformly
    /// from zero up to the step, the step doubling from `first` to `cap`. Many clients
    /// throttled at once then spread evenly over the step instead of coming back together;
    /// at the cap, K of them waiting ask about K / (cap / 2) times a second in all.
    pub fn full_jitter(self) -> impl Iterator<Item = Duration> {
        let mut step = self.first;
        std::iter::repeat_with(move || {
            let wait = step.mul_f64(fastrand::f64());
            step = (step * 2).min(self.cap);
            wait
        })
    }
}

pub const NOTICE: Policy = Policy {
    first: Duration::from_secs(1),
    cap: Duration::from_secs(8),
};

/// What an error says about retrying it.
pub trait RetryHint {
    /// `None`: permanent, stop now. `Some(d)`: transient, wait at least `d` before retrying.
    fn retry_after(&self) -> Option<Duration>;
}

/// Runs `op` until it succeeds, fails permanently, or the deadline leaves no room for the
/// next attempt. `on_retry(error, attempt, sleep)` is called before each sleep.
pub async fn until_deadline<T, E, F, Fut>(
    policy: Policy,
    deadline: Deadline,
    mut on_retry: impl FnMut(&E, u32, Duration),
    op: F,
) -> Result<T, E>
where
    E: RetryHint,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = ExponentialBuilder::new()
        .with_min_delay(policy.first)
        .with_max_delay(policy.cap)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut attempt = 0;
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.retry_after().is_some())
        .adjust(|e: &E, next: Option<Duration>| {
            let asked = e.retry_after()?;
            let room = deadline.remaining().saturating_sub(LAST_ATTEMPT);
            if room.is_zero() || asked > room {
                return None;
            }
            Some(next?.max(asked).min(room))
        })
        .notify(|e: &E, sleep| {
            attempt += 1;
            on_retry(e, attempt, sleep)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Flaky(Option<Duration>);
    impl RetryHint for Flaky {
        fn retry_after(&self) -> Option<Duration> {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline_with_the_last_error() {
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(10));
        let result: Result<(), Flaky> = until_deadline(
            BACKOFF,
            deadline,
            |_, _, _| {},
            || {
                calls.set(calls.get() + 1);
                async { Err(Flaky(Some(Duration::ZERO))) }
            },
        )
        .await;
        assert!(result.is_err());
        // 0.1+0.2+0.4+0.8 s then 1 s steps, each up to twice as long with jitter:
        // at least 8 attempts fit in 10 s, at most ~100; the last one right at the end.
        assert!((8..100).contains(&calls.get()), "{} attempts", calls.get());
        assert!(
            deadline.remaining() <= LAST_ATTEMPT,
            "{:?} left unused",
            deadline.remaining()
        );
    }

    #[test]
    fn full_jitter_draws_each_wait_below_a_doubling_step() {
        let steps = [250, 500, 1000, 2000, 4000, 8000, 8000, 8000];
        for _ in 0..200 {
            let waits: Vec<Duration> = THROTTLED.full_jitter().take(steps.len()).collect();
            for (wait, step) in waits.iter().zip(steps) {
                assert!(*wait <= Duration::from_millis(step), "{wait:?} > {step} ms");
            }
        }
        // Uniform from zero: over many draws at the cap, some below a tenth of it.
        let low = THROTTLED
            .full_jitter()
            .skip(6)
            .take(1000)
            .filter(|w| *w < Duration::from_millis(800))
            .count();
        assert!((50..200).contains(&low), "{low} of 1000 below 800 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn honours_a_longer_retry_after() {
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(10));
        let _: Result<(), Flaky> = until_deadline(
            POLL,
            deadline,
            |_, _, _| {},
            || {
                calls.set(calls.get() + 1);
                async { Err(Flaky(Some(Duration::from_secs(3)))) }
            },
        )
        .await;
        // Attempts at 0, 3, 6, 9 s; the server's next 3 s would end past 10 s.
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let deadline = Deadline::after(Duration::from_secs(10));
        let _: Result<(), Flaky> = until_deadline(
            POLL,
            deadline,
            |_, _, _| {},
            || {
                calls.set(calls.get() + 1);
                async { Err(Flaky(None)) }
            },
        )
        .await;
        assert_eq!(calls.get(), 1);
    }
}
