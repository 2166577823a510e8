//! How long this process's threads have run and have waited for a CPU: the kernel's
//! scheduler statistics (`/proc/self/task/*/schedstat`: time on a CPU, time runnable on a
//! run queue). Whether the machine, rather than what the process waits for, is what holds
//! it back: a busy thread that waits for a CPU as long as it runs is on a machine with more
//! work than cores.

use std::time::Duration;

/// One thread's time on a CPU and time waiting for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub ran: Duration,
    pub queued: Duration,
}

/// Each of this process's threads' [`Usage`] at one moment, by thread id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Threads(Vec<(u32, Usage)>);

impl Threads {
    /// The threads' times now; `None` where the kernel keeps none (built without
    /// `CONFIG_SCHED_INFO`) or `/proc` is not there.
    pub fn now() -> Option<Threads> {
        let mut threads = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let task = task.ok()?;
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that ended since the listing is no longer counted.
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            threads.push((tid, parse(&text)?));
        }
        Some(Threads(threads))
    }

    /// Of the thread that ran longest since `before` (the one the process's work waits
    /// on), the share of the time it could run that it waited for a CPU: near 0 on a
    /// machine with a core for it, towards 1 on one with many times more work than cores.
    /// `None` when no thread there at both ends ran.
    pub fn busiest_queued_since(&self, before: &Threads) -> Option<f64> {
        let (ran, queued) = self
            .0
            .iter()
            .filter_map(|(tid, now)| {
                let (_, then) = before.0.iter().find(|(t, _)| t == tid)?;
                Some((
                    now.ran.saturating_sub(then.ran),
                    now.queued.saturating_sub(then.queued),
                ))
            })
            .max_by_key(|(ran, _)| *ran)?;
        (!ran.is_zero()).then(|| queued.as_secs_f64() / (ran + queued).as_secs_f64())
    }
}

/// One thread's `schedstat`: nanoseconds on a CPU, nanoseconds on a run queue, timeslices.
fn parse(text: &str) -> Option<Usage> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let ran = fields.next()?.ok()?;
    let queued = fields.next()?.ok()?;
    Some(Usage {
        ran: Duration::from_nanos(ran),
        queued: Duration::from_nanos(queued),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_line_is_its_times() {
        assert_eq!(
            parse("536115941 292665 46\n"),
            Some(Usage {
                ran: Duration::from_nanos(536_115_941),
                queued: Duration::from_nanos(292_665),
            })
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("12 x 3"), None);
    }

    #[test]
    fn the_share_queued_is_the_busiest_threads() {
        let at = |ran, queued| Usage {
            ran: Duration::from_millis(ran),
            queued: Duration::from_millis(queued),
        };
        let before = Threads(vec![(1, at(100, 50)), (2, at(0, 0)), (3, at(5, 5))]);
        let cases = [
            (
                "the busiest never waited",
                vec![(1, at(400, 50)), (2, at(10, 90))],
                Some(0.0),
            ),
            (
                "waited as long as it ran",
                vec![(1, at(200, 150)), (2, at(10, 0))],
                Some(0.5),
            ),
            (
                "waited three times as long",
                vec![(1, at(110, 80)), (2, at(5, 0))],
                Some(0.75),
            ),
            (
                "another ran longer",
                vec![(1, at(110, 140)), (2, at(20, 0))],
                Some(0.0),
            ),
            (
                "a thread not there before is left out",
                vec![(1, at(200, 50)), (7, at(900, 900))],
                Some(0.0),
            ),
            ("none ran", vec![(1, at(100, 60)), (3, at(5, 9))], None),
            ("none there at both ends", vec![(9, at(100, 60))], None),
        ];
        for (what, now, expected) in cases {
            assert_eq!(
                Threads(now).busiest_queued_since(&before),
                expected,
                "{what}"
            );
        }
    }

    /// This process's own threads are counted: a busy loop shows as time on a CPU.
    #[test]
    fn this_process_is_read() {
        let before = Threads::now().expect("this kernel keeps schedstat");
        let ran = |threads: &Threads| threads.0.iter().map(|(_, u)| u.ran).sum::<Duration>();
        let start = std::time::Instant::now();
        loop {
            for _ in 0..100_000 {
                std::hint::black_box(0u64);
            }
            let after = Threads::now().unwrap();
            if ran(&after) >= ran(&before) + Duration::from_millis(20) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{before:?} {after:?}"
            );
        }
    }
}
