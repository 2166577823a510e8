//! How busy this process is: the CPU time its threads used, and how long they waited for a
//! CPU while runnable (the kernel's `/proc/self/task/*/schedstat`, second field). Together,
//! over an interval, they say whether the process waited for the network (neither) or for
//! a CPU: its own work, or other processes' (a small instance booting many things at once).
//! The ranged download decides from this how its parts come (`sync::source::bundle`).

use std::time::Duration;

/// A reading of the process's CPU time and its threads' run-queue waits so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    cpu: Duration,
    /// `None` where the kernel does not show schedstat (then only the CPU time counts).
    waited: Option<Duration>,
}

impl Busy {
    /// Now. Threads that ended since an earlier reading take their waits with them: the
    /// difference of two readings undercounts then, never overcounts.
    pub fn now() -> Busy {
        let cpu = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .map(Duration::from)
            .unwrap_or_default();
        Busy {
            cpu,
            waited: run_queue_waits(),
        }
    }

    /// How long the process was on a CPU or waiting for one between `earlier` and this
    /// reading, summed over its threads.
    pub fn since(&self, earlier: &Busy) -> Duration {
        let waited = match (self.waited, earlier.waited) {
            (Some(now), Some(then)) => now.saturating_sub(then),
            _ => Duration::ZERO,
        };
        self.cpu.saturating_sub(earlier.cpu) + waited
    }
}

/// The sum of every thread's time waiting on a run queue, in the kernel's nanoseconds.
fn run_queue_waits() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        // A thread that ended between the listing and the read is skipped.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spinning on this thread counts as busy: on a CPU or waiting for one, all the time it
    /// spun. (Other tests' threads may add to it, never take away.)
    #[test]
    fn spinning_counts_as_busy() {
        let before = Busy::now();
        assert!(before.waited.is_some(), "this kernel shows schedstat");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let busy = Busy::now().since(&before);
        assert!(busy >= Duration::from_millis(25), "{busy:?}");
    }
}
