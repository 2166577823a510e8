//! The mechanics of the SIGKILL tests (`s3_sync`, `bundles`): a sync started with its
//! stderr drained (a full pipe would stop it short of any point), killed the moment a
//! condition holds, and the tally that proves most rounds really died mid-sync with both
//! outcomes (the old tree, the new one) seen.

use std::fmt::Debug;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::task::JoinHandle;

/// How long a round may wait for its point.
pub const POINT_WAIT: Duration = Duration::from_secs(30);

/// A started sync and its stderr, read as it comes.
pub struct Running {
    pub child: Child,
    log: JoinHandle<String>,
}

pub fn start(mut cmd: tokio::process::Command) -> Running {
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    Running { child, log }
}

impl Running {
    /// Polls `there` every millisecond until it holds (`true`), or the sync ended or
    /// [`POINT_WAIT`] passed (`false`).
    pub async fn until(&mut self, mut there: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + POINT_WAIT;
        loop {
            if there() {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() || Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// SIGKILL now (if still running); whether the kill ended it, and its stderr. A round
    /// that never reached its point, or ended otherwise than by the kill or success, fails.
    pub async fn kill(mut self, reached: bool, round: usize, at: &impl Debug) -> bool {
        let _ = self.child.start_kill();
        let status = self.child.wait().await.unwrap();
        let stderr = self.log.await.unwrap();
        assert!(
            reached,
            "round {round}: never reached {at:?}: {status}\n{stderr}"
        );
        let killed = status.signal() == Some(9);
        assert!(
            killed || status.success(),
            "round {round}: {status}\n{stderr}"
        );
        killed
    }
}

/// Per round: where it was killed, whether the kill ended it, whether the old tree stayed.
/// At least three quarters of the rounds died of the kill, and both outcomes occurred.
pub fn assert_most_died_mid_sync<T: Debug>(results: &[(T, bool, bool)]) {
    let rounds = results.len();
    let killed = |old: bool| results.iter().filter(|r| r.1 && r.2 == old).count();
    let (killed_old, killed_new) = (killed(true), killed(false));
    eprintln!(
        "{rounds} rounds: SIGKILL left the old tree {killed_old} times, the new tree \
         {killed_new} times; the rest had finished: {results:?}"
    );
    assert!(
        (killed_old + killed_new) * 4 >= rounds * 3,
        "only {} of {rounds} rounds died of SIGKILL mid-sync: {results:?}",
        killed_old + killed_new
    );
    assert!(
        killed_old >= 1 && killed_new >= 1,
        "a kill must leave each of the old and the new tree at least once: {results:?}"
    );
}
