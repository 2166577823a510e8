//! Releases (#28): a release pointer in SSM that a pass reads each time, generations kept
//! (`keep`), a `verify` that swaps the previous generation back when a release fails it,
//! and `bootstage rollback` with its pin; against moto (SSM, S3) and a webhook on
//! loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, Sandbox, kill, moto::moto, webhook::Webhook};

const POINTER: &str = "/shop/web/release";

/// A release as a build would tar it: `version` and a file per release.
fn release(v: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("version".to_string(), format!("{v}\n")),
        (format!("bin/app-{v}"), "#!/bin/sh\n".to_string()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Which release `dest` serves, and that its tree is whole.
fn serving(dest: &Path) -> String {
    let v = std::fs::read_to_string(dest.join("version")).unwrap();
    let v = v.trim().to_string();
    assert!(
        dest.join(format!("bin/app-{v}")).is_file(),
        "{v}: a whole tree"
    );
    v
}

/// An SSM parameter (in its own namespace per test: moto is shared) set to `value`.
async fn point(name: &str, value: &str) {
    moto()
        .ssm()
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

struct Fixture {
    sb: Sandbox,
    bucket: String,
    pointer: String,
    dest: PathBuf,
}

impl Fixture {
    /// A bucket holding releases 1..=n, a pointer to release 1, and the parameters with
    /// one sync entry (`extra` added to it) and `notify` if given.
    async fn new(name: &str, n: usize, extra: serde_json::Value, notify: Option<&str>) -> Fixture {
        let bucket = moto().bucket(name).await;
        for v in 1..=n {
            bucket
                .put(&format!("web/{v}.tar"), release(&v.to_string()))
                .await;
        }
        let sb = Sandbox::new();
        let dest = sb.path("srv/code");
        let pointer = format!("/{name}{POINTER}");
        let mut entry = serde_json::json!({"from": {"ssm": pointer}, "to": dest});
        entry
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sb.seed_sync(serde_json::json!([entry]));
        if let Some(url) = notify {
            let params =
                serde_json::json!({"bootstage": {"sync": [entry], "notify": {"url": url}}});
            sb.seed("params.json", &params.to_string());
        }
        let f = Fixture {
            sb,
            bucket: name.to_string(),
            pointer,
            dest,
        };
        f.point(1).await;
        f
    }

    async fn point(&self, v: usize) {
        point(&self.pointer, &format!("s3://{}/web/{v}.tar", self.bucket)).await;
    }

    async fn run(&self, args: &[&str]) -> common::Outcome {
        let mut cmd = self.sb.command(args);
        cmd.envs(moto().env());
        common::run(cmd).await
    }

    async fn sync(&self) -> common::Outcome {
        self.run(&["s3-sync", "--sync-timeout", "20s"]).await
    }

    /// `bootstage generations DEST --json`.
    async fn generations(&self) -> serde_json::Value {
        let out = self
            .run(&["generations", self.dest.to_str().unwrap(), "--json"])
            .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Each kept generation's release (from its source's name) and state, oldest first.
    async fn states(&self) -> Vec<(String, String)> {
        let listed = self.generations().await;
        listed["generations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let source = g["source"].as_str().unwrap();
                let v = source.rsplit('/').next().unwrap().trim_end_matches(".tar");
                (v.to_string(), g["state"].as_str().unwrap().to_string())
            })
            .collect()
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A new instance starts on the release the pointer names; a watcher swaps within one
/// pass when the pointer moves, and runs the hook once.
#[tokio::test(flavor = "multi_thread")]
async fn a_moved_pointer_is_swapped_in_on_the_next_pass() {
    use std::os::unix::net::UnixDatagram;
    let f = Fixture::new("rel-moved", 2, serde_json::json!({}), None).await;
    let socket_path = f.sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let hook_log = f.sb.path("hook.log");
    let hook = format!("echo \"$BOOTSTAGE_CHANGED\" >> {}", hook_log.display());
    let mut cmd =
        f.sb.command(&["s3-sync", "--watch", "200ms", "--on-change", &hook]);
    cmd.envs(moto().env()).env("NOTIFY_SOCKET", &socket_path);
    let mut child = cmd.spawn().unwrap();
    common::next_notification(&socket, "READY=1");
    assert_eq!(serving(&f.dest), "1");
    f.point(2).await;
    common::next_notification(&socket, "RELOADING=1");
    common::next_notification(&socket, "READY=1");
    assert_eq!(serving(&f.dest), "2");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("{}\n", f.dest.display())
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    assert_eq!(
        f.states().await,
        pairs(&[("1", "previous"), ("2", "current")])
    );
}

/// A pointer whose value is not a source is refused as user-data would be, naming the
/// parameter; a missing one says so; the tree stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_pointer_is_refused_naming_the_parameter() {
    let f = Fixture::new("rel-bad", 1, serde_json::json!({}), None).await;
    assert_eq!(f.sync().await.code, 0);
    // A value that is not an s3:// URL, shaped like a secret that should never be
    // echoed: the parameter is named, its value is not.
    point(&f.pointer, "file:///etc/Sup3r-s3cret").await;
    let out = f.sync().await;
    common::assert_exit(
        &out,
        65,
        &format!(
            "release pointer SSM parameter {:?} for {}: its value is not an s3:// URL",
            f.pointer,
            f.dest.display()
        ),
    );
    assert!(!out.stderr.contains("Sup3r-s3cret"), "{}", out.stderr);
    assert_eq!(serving(&f.dest), "1");
    let missing = Fixture::new("rel-missing", 1, serde_json::json!({}), None).await;
    moto()
        .ssm()
        .await
        .delete_parameter()
        .name(&missing.pointer)
        .send()
        .await
        .unwrap();
    let out = missing.sync().await;
    common::assert_exit(
        &out,
        66,
        &format!(
            "release pointer SSM parameter {:?}: no such parameter",
            missing.pointer
        ),
    );
}

/// Release 2 fails its verify (twice: two attempts): release 1 is current again, 2 is
/// marked failed, the run exits 79, the notice names both; the next pass asks S3 about
/// release 2 and stays (a 304, no download).
#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_fails_its_verify_is_rolled_back_marked_and_noticed() {
    let webhook = Webhook::start(&[]).await;
    let sb_log = tempfile::NamedTempFile::new().unwrap();
    let log = sb_log.path().display().to_string();
    let verify = format!(
        "echo \"$(cat $BOOTSTAGE_DEST/version) $BOOTSTAGE_SOURCE\" >> {log}; test \"$(cat $BOOTSTAGE_DEST/version)\" != 2"
    );
    let extra = serde_json::json!({"verify": verify, "verify_attempts": 2, "verify_timeout": 10});
    let f = Fixture::new("rel-verify", 2, extra, Some(&webhook.url)).await;
    assert_eq!(f.sync().await.code, 0);
    f.point(2).await;
    let out = f.sync().await;
    common::assert_exit(
        &out,
        79,
        &format!(
            "{}: the release s3://rel-verify/web/2.tar failed its verify (verify exited with 1 (attempt 2 of 2)); the previous generation (s3://rel-verify/web/1.tar) is current again",
            f.dest.display()
        ),
    );
    assert_eq!(serving(&f.dest), "1");
    assert_eq!(
        std::fs::read_to_string(sb_log.path()).unwrap(),
        "1 s3://rel-verify/web/1.tar\n2 s3://rel-verify/web/2.tar\n2 s3://rel-verify/web/2.tar\n"
    );
    assert_eq!(
        f.states().await,
        pairs(&[("1", "current"), ("2", "failed")])
    );
    let notices = webhook.received();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let body = &notices[0].body;
    assert_eq!(body["event"], "release_failed");
    let about = &body["release_failed"];
    assert_eq!(about["dest"], f.dest.display().to_string());
    assert_eq!(about["failed"]["source"], "s3://rel-verify/web/2.tar");
    assert_eq!(about["running"]["source"], "s3://rel-verify/web/1.tar");
    assert_eq!(about["why"], "verify exited with 1 (attempt 2 of 2)");
    // The pointer still names release 2: it is not tried again.
    let mark = moto().mark();
    let out = f.sync().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(serving(&f.dest), "1");
    let counts = moto().counts("rel-verify", mark);
    assert_eq!((counts.get, counts.not_modified), (0, 1), "{counts:?}");
    assert_eq!(
        std::fs::read_to_string(sb_log.path())
            .unwrap()
            .lines()
            .count(),
        3,
        "no verify for a release that is not swapped in"
    );
}

/// At boot, a release that fails its verify with nothing before it fails the stage
/// (79), and a second run does not pass it either.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_release_that_fails_its_verify_fails_the_stage() {
    let extra = serde_json::json!({"verify": "exit 3"});
    let f = Fixture::new("rel-first", 1, extra, None).await;
    for _ in 0..2 {
        let out = f.sync().await;
        common::assert_exit(
            &out,
            79,
            "failed its verify (verify exited with 3); no previous generation is kept, so it stays current, marked failed",
        );
    }
    let out = f.sync().await;
    assert_eq!(out.code, 79);
    assert_eq!(f.states().await, pairs(&[("1", "current")]));
    let listed = f.generations().await;
    assert!(listed["generations"][0]["failed"].is_string(), "{listed}");
}

/// `rollback` swaps the previous release back, runs the hook, records who; the pass
/// keeps it there while the pointer names the release rolled back from; `--clear` lets
/// the next pass move forward; a new release moves it forward too.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_holds_until_the_source_moves_or_clear() {
    let f = Fixture::new("rel-rollback", 3, serde_json::json!({}), None).await;
    assert_eq!(f.sync().await.code, 0);
    f.point(2).await;
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "2");
    let hook_log = f.sb.path("hook.log");
    let hook = format!("echo \"$BOOTSTAGE_CHANGED\" >> {}", hook_log.display());
    let dest = f.dest.to_str().unwrap();
    let mut cmd = f.sb.command(&["rollback", dest, "--on-change", &hook]);
    cmd.env("SUDO_USER", "alice");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(serving(&f.dest), "1");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("{dest}\n")
    );
    assert_eq!(
        f.states().await,
        pairs(&[("1", "current"), ("2", "rolled-back")])
    );
    let listed = f.generations().await;
    assert_eq!(listed["pin"]["by"], "alice (uid 0)");
    assert_eq!(
        listed["pin"]["from"]["source"],
        "s3://rel-rollback/web/2.tar"
    );
    // The pointer still says 2: the pass stays on 1, asking S3 about 2 (a 304).
    let mark = moto().mark();
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "1");
    let counts = moto().counts("rel-rollback", mark);
    assert_eq!((counts.get, counts.not_modified), (0, 1), "{counts:?}");
    // Nothing earlier to roll back to.
    let out = f.run(&["rollback", dest]).await;
    common::assert_exit(&out, 66, "no previous generation is kept");
    // --clear: the next pass swaps release 2 in.
    let out = f.run(&["rollback", dest, "--clear"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("the rollback's pin is cleared"),
        "{}",
        out.stdout
    );
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "2");
    // Rolled back again, then the pointer moves to 3: the pass moves forward.
    assert_eq!(f.run(&["rollback", dest]).await.code, 0);
    assert_eq!(serving(&f.dest), "1");
    f.point(3).await;
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "3");
    assert_eq!(f.generations().await["pin"], serde_json::Value::Null);
}

/// `keep: 3` keeps exactly three generations on disk, the newest; `--to` names one.
#[tokio::test(flavor = "multi_thread")]
async fn keep_3_keeps_exactly_three() {
    let f = Fixture::new("rel-keep", 5, serde_json::json!({"keep": 3}), None).await;
    for v in 1..=5 {
        f.point(v).await;
        let out = f.sync().await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(
        f.states().await,
        pairs(&[("3", "previous"), ("4", "previous"), ("5", "current")])
    );
    let home = f.sb.path("srv/.code.bootstage");
    let mut gens: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("gen-") && !n.ends_with(".json"))
        .collect();
    gens.sort();
    assert_eq!(gens.len(), 3, "{gens:?}");
    let oldest = f.generations().await["generations"][0]["generation"]
        .as_str()
        .unwrap()
        .to_string();
    let out = f
        .run(&["rollback", f.dest.to_str().unwrap(), "--to", &oldest])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(serving(&f.dest), "3");
}

/// SIGKILL at any instant of a rollback (or of its way back with `--to`) leaves one
/// complete generation current, and the next command reads the destination as usual.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_any_point_of_a_rollback_leaves_one_complete_generation() {
    let f = Fixture::new("rel-killed", 2, serde_json::json!({}), None).await;
    assert_eq!(f.sync().await.code, 0);
    f.point(2).await;
    assert_eq!(f.sync().await.code, 0);
    let listed = f.generations().await;
    let name = |i: usize| {
        listed["generations"][i]["generation"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (one, two) = (name(0), name(1));
    let dest = f.dest.to_str().unwrap().to_string();
    // How long one rollback takes here: the kills land from its start to past its end.
    let started = std::time::Instant::now();
    assert_eq!(f.run(&["rollback", &dest, "--to", &one]).await.code, 0);
    let span = started.elapsed().as_micros() as u64;
    let mut rng = fastrand::Rng::with_seed(28);
    let mut results = Vec::new();
    for round in 0..40 {
        let before = serving(&f.dest);
        let target = if before == "1" { &two } else { &one };
        let at = rng.u64(0..span);
        let mut cmd = f.sb.command(&["rollback", &dest, "--to", target]);
        cmd.envs(moto().env());
        let running = kill::start(cmd);
        tokio::time::sleep(Duration::from_micros(at)).await;
        let killed = running.kill(true, round, &at).await;
        let now = serving(&f.dest);
        assert!(now == "1" || now == "2", "round {round}: {now}");
        results.push((at, killed, now == before));
    }
    eprintln!("{results:?}");
    let killed = results.iter().filter(|r| r.1).count();
    assert!(
        killed >= 10,
        "{killed} of 40 rounds died of the kill: {results:?}"
    );
    // The destination is read and used as usual after it all.
    let states = f.states().await;
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(
        states.iter().filter(|(_, s)| s == "current").count(),
        1,
        "{states:?}"
    );
    assert!(f.run(&["rollback", &dest, "--clear"]).await.code == 0);
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "2");
}

/// A watcher, its notification socket, and its stderr as it comes.
struct Watching {
    child: tokio::process::Child,
    socket: std::os::unix::net::UnixDatagram,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watching {
    /// `s3-sync --watch 200ms --on-change HOOK` of the sandbox's configured sync, once
    /// READY.
    fn start(sb: &Sandbox, hook: &str) -> Watching {
        Watching::start_with(
            sb,
            &[
                "s3-sync",
                "--watch",
                "200ms",
                "--sync-timeout",
                "20s",
                "--on-change",
                hook,
            ],
        )
    }

    /// `bootstage ARGS` (a watcher), once READY.
    fn start_with(sb: &Sandbox, args: &[&str]) -> Watching {
        let socket_path = sb.path("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut cmd = sb.command(args);
        cmd.envs(moto().env()).env("NOTIFY_SOCKET", &socket_path);
        let mut child = cmd.spawn().unwrap();
        let stderr = common::capture_stderr(&mut child);
        let w = Watching {
            child,
            socket,
            stderr,
        };
        w.next("READY=1");
        w
    }

    fn next(&self, want: &str) {
        common::next_notification(&self.socket, want);
    }

    /// SIGTERM; the exit code and how long the exit took.
    async fn stop(mut self) -> (Option<i32>, Duration, String) {
        // systemd reads every notification; the exit waits for that (its barrier).
        let socket = self.socket.try_clone().unwrap();
        std::thread::spawn(move || while common::recv_notification(&socket).is_ok() {});
        let started = std::time::Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let code = self.child.wait().await.unwrap().code();
        let took = started.elapsed();
        (code, took, self.stderr.lock().unwrap().clone())
    }
}

/// Two destinations with a `verify`, both moved by one pointer in one pass: the hook
/// runs once after both swaps, each verify after it; when both fail, both are swapped
/// back and the hook runs once more. (It ran once per destination, before.)
#[tokio::test(flavor = "multi_thread")]
async fn two_verified_destinations_run_the_hook_once_a_pass() {
    let name = "rel-two";
    let bucket = moto().bucket(name).await;
    for v in 1..=3 {
        bucket
            .put(&format!("web/{v}.tar"), release(&v.to_string()))
            .await;
    }
    let sb = Sandbox::new();
    let (a, b) = (sb.path("srv/a"), sb.path("srv/b"));
    let hook_log = sb.path("hook.log");
    let verify_log = sb.path("verify.log");
    std::fs::write(&hook_log, "").unwrap();
    // Each verify notes which tree it checked and after how many hook runs; release 3
    // fails.
    let verify = format!(
        "echo \"$(basename $BOOTSTAGE_DEST) $(cat $BOOTSTAGE_DEST/version) after $(wc -l < {h})\" >> {v}; test \"$(cat $BOOTSTAGE_DEST/version)\" != 3",
        h = hook_log.display(),
        v = verify_log.display()
    );
    let pointer = format!("/{name}{POINTER}");
    let entry =
        |to: &Path| serde_json::json!({"from": {"ssm": pointer}, "to": to, "verify": verify});
    sb.seed_sync(serde_json::json!([entry(&a), entry(&b)]));
    let to = |v: usize| format!("s3://{name}/web/{v}.tar");
    point(&pointer, &to(1)).await;
    let hook = format!("echo \"$BOOTSTAGE_CHANGED\" >> {}", hook_log.display());
    let both = format!("{}:{}", a.display(), b.display());
    // Each verify's lines of a pass, in order (they run together).
    let verified = |from: usize| {
        let text = std::fs::read_to_string(&verify_log).unwrap();
        let mut lines: Vec<String> = text.lines().skip(from).map(str::to_string).collect();
        lines.sort();
        lines
    };
    let hooks = || std::fs::read_to_string(&hook_log).unwrap();
    let w = Watching::start(&sb, &hook);
    // The first pass swapped both in: one hook, then both verifies.
    assert_eq!(hooks(), format!("{both}\n"), "{}", w.stderr.lock().unwrap());
    assert_eq!(verified(0), ["a 1 after 1", "b 1 after 1"]);
    point(&pointer, &to(2)).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(hooks(), format!("{both}\n{both}\n"));
    assert_eq!(verified(2), ["a 2 after 2", "b 2 after 2"]);
    assert_eq!((serving(&a), serving(&b)), ("2".into(), "2".into()));
    // Release 3 fails both: one hook after the swaps, both verifies, both swapped back,
    // one hook after that.
    point(&pointer, &to(3)).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(
        hooks(),
        format!("{both}\n{both}\n{both}\n{both}\n"),
        "{}",
        w.stderr.lock().unwrap()
    );
    assert_eq!(verified(4), ["a 3 after 3", "b 3 after 3"]);
    assert_eq!((serving(&a), serving(&b)), ("2".into(), "2".into()));
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    // The next passes asked S3 about release 3 and left both alone: no hook since.
    assert_eq!(hooks().lines().count(), 4, "{stderr}");
}

/// SIGTERM while a new release's verify runs: the verify ends at once (its whole process
/// group), the watcher exits 0, and the release stays current marked `unverified`: the
/// app's hook already ran for it, so swapping back without a hook would leave the app
/// and its tree apart, and a hook is no job for a stopping unit. The next start verifies
/// it again: here it fails, so the previous release is swapped back. (Before, the next
/// start passed it unverified.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_verify_leaves_it_unverified_and_the_next_start_verifies_it() {
    let sb_dir = tempfile::tempdir().unwrap();
    let fifo = sb_dir.path().join("verifying");
    let block = sb_dir.path().join("block");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::write(&block, "").unwrap();
    // Release 2's verify, while `block` exists, says it started on the FIFO (holding it
    // open, as its sleep does) and waits; without `block` it fails.
    let verify = format!(
        "v=$(cat $BOOTSTAGE_DEST/version); if [ $v = 2 ] && [ -e {block} ]; then exec 3>{fifo}; echo started >&3; sleep 60; exit 1; fi; test $v != 2",
        block = block.display(),
        fifo = fifo.display()
    );
    let extra = serde_json::json!({"verify": verify, "verify_timeout": 120});
    let f = Fixture::new("rel-sigterm", 2, extra, None).await;
    assert_eq!(f.sync().await.code, 0);
    let hook_log = f.sb.path("hook.log");
    let hook = format!("echo \"$BOOTSTAGE_CHANGED\" >> {}", hook_log.display());
    let w = Watching::start(&f.sb, &hook);
    f.point(2).await;
    // The verify has started: its first line; the rest of the FIFO is its end.
    let reader = {
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::{BufRead, Read};
            let mut r = std::io::BufReader::new(std::fs::File::open(&fifo).unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut rest = String::new();
                let _ = r.read_to_string(&mut rest);
                let _ = tx.send(());
            });
            (line, rx)
        })
    };
    let (line, ended) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the verify started")
        .unwrap();
    assert_eq!(line, "started\n");
    let (code, took, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}: {stderr}");
    // The verify's whole group is gone (its sleep too): the FIFO's writers are closed.
    ended
        .recv_timeout(Duration::from_secs(5))
        .expect("the verify's processes ended with the watcher");
    assert_eq!(serving(&f.dest), "2");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("{}\n", f.dest.display())
    );
    let listed = f.generations().await;
    assert_eq!(
        f.states().await,
        pairs(&[("1", "previous"), ("2", "current")])
    );
    assert!(
        listed["generations"][1]["unverified"].is_string(),
        "{listed}"
    );
    assert_eq!(
        listed["generations"][0]["unverified"],
        serde_json::Value::Null
    );
    // The next start verifies release 2 (now failing): release 1 is swapped back.
    std::fs::remove_file(&block).unwrap();
    let out = f.sync().await;
    common::assert_exit(
        &out,
        79,
        &format!(
            "{}: the release s3://rel-sigterm/web/2.tar failed its verify (verify exited with 1); the previous generation (s3://rel-sigterm/web/1.tar) is current again",
            f.dest.display()
        ),
    );
    assert_eq!(serving(&f.dest), "1");
    assert_eq!(
        f.states().await,
        pairs(&[("1", "current"), ("2", "failed")])
    );
    // A release that passes a verify cut short is no longer unverified.
    assert_eq!(
        f.generations().await["generations"][0]["unverified"],
        serde_json::Value::Null
    );
}

/// A shell step that, while `block` exists, says it started on a FIFO (holding it open,
/// as its sleep does) and waits; without `block` it does nothing.
struct Held {
    _dir: tempfile::TempDir,
    fifo: PathBuf,
    block: PathBuf,
}

impl Held {
    fn new() -> Held {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("started");
        let block = dir.path().join("block");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        Held {
            _dir: dir,
            fifo,
            block,
        }
    }

    fn shell(&self) -> String {
        format!(
            "if [ -e {block} ]; then exec 3>{fifo}; echo started >&3; sleep 60; fi",
            block = self.block.display(),
            fifo = self.fifo.display()
        )
    }

    fn hold(&self, on: bool) {
        match on {
            true => std::fs::write(&self.block, "").unwrap(),
            false => std::fs::remove_file(&self.block).unwrap(),
        }
    }

    /// Waits for the step to start.
    async fn started(&self) {
        let fifo = self.fifo.clone();
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut r = std::io::BufReader::new(std::fs::File::open(&fifo).unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(30), line)
            .await
            .expect("the held step started")
            .unwrap();
        assert_eq!(line, "started\n");
    }
}

/// SIGTERM while the hook after a new release's swap runs (before its verify): the hook
/// is owed, so the next start runs it again, then the verify. (Before, the next start
/// verified with no hook: the app was never told of the release it then kept.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_hook_before_a_verify_owes_it_to_the_next_start() {
    let logs = tempfile::tempdir().unwrap();
    let (hook_log, verify_log) = (logs.path().join("hook.log"), logs.path().join("verify.log"));
    std::fs::write(&hook_log, "").unwrap();
    let verify = format!(
        "echo \"$(cat $BOOTSTAGE_DEST/version) after $(wc -l < {h})\" >> {v}",
        h = hook_log.display(),
        v = verify_log.display()
    );
    let f = Fixture::new("rel-owed", 2, serde_json::json!({"verify": verify}), None).await;
    let held = Held::new();
    let hook = format!(
        "echo \"$BOOTSTAGE_CHANGED\" >> {}; {}",
        hook_log.display(),
        held.shell()
    );
    let w = Watching::start(&f.sb, &hook);
    held.hold(true);
    f.point(2).await;
    held.started().await;
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    let dest = f.dest.display().to_string();
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("{dest}\n{dest}\n")
    );
    assert_eq!(std::fs::read_to_string(&verify_log).unwrap(), "1 after 1\n");
    held.hold(false);
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        format!("{dest}\n{dest}\n{dest}\n"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&verify_log).unwrap(),
        "1 after 1\n2 after 3\n"
    );
    assert_eq!(serving(&f.dest), "2");
    let listed = f.generations().await;
    assert_eq!(
        listed["generations"][1]["unverified"],
        serde_json::Value::Null
    );
    // Paid: a third start runs no hook.
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap().lines().count(),
        3
    );
}

/// A pass in which a release left unverified (a `s3-sync` by hand, killed during its
/// verify) fails its verify again while another destination without a verify swaps: the
/// hook names the swapped one before the verify, and the rolled-back one after. (Before,
/// the rollback's hook named only the rolled-back one, and the watcher skipped its own:
/// the other swap was never announced.)
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_hook_does_not_swallow_the_passes_other_changes() {
    let name = "rel-unnamed";
    let bucket = moto().bucket(name).await;
    for v in 1..=2 {
        bucket
            .put(&format!("web/{v}.tar"), release(&v.to_string()))
            .await;
    }
    bucket.put("other.tar", release("b1")).await;
    let (queue, _) = moto().queue(name).await;
    let held = Held::new();
    let sb = Sandbox::new();
    let (a, b) = (sb.path("srv/a"), sb.path("srv/b"));
    let verify = format!(
        "v=$(cat $BOOTSTAGE_DEST/version); if [ $v = 2 ]; then {}; fi; test $v != 2",
        held.shell()
    );
    let pointer = format!("/{name}{POINTER}");
    sb.seed_sync(serde_json::json!([
        {"from": {"ssm": pointer}, "to": a, "verify": verify, "verify_timeout": 120},
        {"from": format!("s3://{name}/other.tar"), "to": b},
    ]));
    point(&pointer, &format!("s3://{name}/web/1.tar")).await;
    let hook_log = sb.path("hook.log");
    let hook = format!("echo \"$BOOTSTAGE_CHANGED\" >> {}", hook_log.display());
    let w = Watching::start_with(
        &sb,
        &[
            "s3-sync",
            "--watch",
            "1h",
            "--sqs",
            &queue,
            "--sync-timeout",
            "20s",
            "--on-change",
            &hook,
        ],
    );
    let hooks = || std::fs::read_to_string(&hook_log).unwrap();
    let (a_, b_) = (a.display().to_string(), b.display().to_string());
    assert_eq!(hooks(), format!("{a_}:{b_}\n"));
    // A sync by hand swaps release 2 into a and is killed during its verify.
    point(&pointer, &format!("s3://{name}/web/2.tar")).await;
    held.hold(true);
    let mut cmd = sb.command(&["s3-sync", "--sync-timeout", "20s"]);
    cmd.envs(moto().env());
    let mut by_hand = cmd.spawn().unwrap();
    held.started().await;
    held.hold(false);
    // A one-off run dies of it (as of a crash): a leaves it unverified.
    by_hand.kill().await.unwrap();
    assert_eq!(serving(&a), "2");
    // b's source moves; one message makes one pass over both.
    bucket.put("other.tar", release("b2")).await;
    moto()
        .sqs()
        .await
        .send_message()
        .queue_url(&queue)
        .message_body(r#"{"sync": "all"}"#)
        .send()
        .await
        .unwrap();
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!((serving(&a), serving(&b)), ("1".into(), "b2".into()));
    assert_eq!(
        hooks(),
        format!("{a_}:{b_}\n{b_}\n{a_}\n"),
        "{}",
        w.stderr.lock().unwrap()
    );
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// A SIGKILL between a failed release's mark and the rename back leaves it current and
/// marked failed, with the previous one kept (this disk is written as that instant leaves
/// it): the next run completes the rollback, sends the notice, and the one after passes.
/// (Before, every run failed with the failed release current, for ever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_cut_short_is_completed_by_the_next_run() {
    let webhook = Webhook::start(&[]).await;
    let f = Fixture::new(
        "rel-halfway",
        2,
        serde_json::json!({"verify": "true"}),
        Some(&webhook.url),
    )
    .await;
    assert_eq!(f.sync().await.code, 0);
    f.point(2).await;
    assert_eq!(f.sync().await.code, 0);
    assert_eq!(serving(&f.dest), "2");
    let record = f.sb.path("srv/.code.bootstage/generations.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let current = &mut json["generations"][1];
    current["failed"] = "2026-12-07T00:00:00Z: verify exited with 1".into();
    let failed = serde_json::json!([{"source": current["source"], "version": current["version"]}]);
    json["failed"] = failed;
    std::fs::write(&record, json.to_string()).unwrap();
    let out = f.sync().await;
    common::assert_exit(
        &out,
        79,
        &format!(
            "{}: the release s3://rel-halfway/web/2.tar failed its verify (verify exited with 1); the previous generation (s3://rel-halfway/web/1.tar) is current again",
            f.dest.display()
        ),
    );
    assert_eq!(serving(&f.dest), "1");
    assert_eq!(
        f.states().await,
        pairs(&[("1", "current"), ("2", "failed")])
    );
    let notices = webhook.received();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let about = &notices[0].body["release_failed"];
    assert_eq!(about["failed"]["source"], "s3://rel-halfway/web/2.tar");
    assert_eq!(about["running"]["source"], "s3://rel-halfway/web/1.tar");
    assert_eq!(about["why"], "verify exited with 1");
    let out = f.sync().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(serving(&f.dest), "1");
    assert_eq!(webhook.received().len(), 1, "the notice once");
}

/// SIGTERM during the hook that follows a failed release's rollback: the app may serve
/// the failed tree and nobody has been told. The next start runs the hook (owed since
/// the rollback's record) and sends the `release_failed` notice (owed since the `failed`
/// mark), once each. (Before, it did neither.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_rollback_hook_owes_the_hook_and_the_notice() {
    let webhook = Webhook::start(&[]).await;
    let extra = serde_json::json!({"verify": "test \"$(cat $BOOTSTAGE_DEST/version)\" != 2"});
    let f = Fixture::new("rel-owed-back", 2, extra, Some(&webhook.url)).await;
    let held = Held::new();
    let hook_log = f.sb.path("hook.log");
    // Held only after a rollback to release 1 (the first pass serves 1 too: `block` is
    // made after it).
    let hook = format!(
        "echo \"$BOOTSTAGE_CHANGED $(cat $BOOTSTAGE_CHANGED/version)\" >> {}; if [ \"$(cat $BOOTSTAGE_CHANGED/version)\" = 1 ]; then {}; fi",
        hook_log.display(),
        held.shell()
    );
    let w = Watching::start(&f.sb, &hook);
    held.hold(true);
    f.point(2).await;
    held.started().await;
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(serving(&f.dest), "1");
    let dest = f.dest.display().to_string();
    let hooks = || std::fs::read_to_string(&hook_log).unwrap();
    assert_eq!(hooks(), format!("{dest} 1\n{dest} 2\n{dest} 1\n"));
    assert_eq!(webhook.received().len(), 0, "the notice follows the hook");
    held.hold(false);
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        hooks(),
        format!("{dest} 1\n{dest} 2\n{dest} 1\n{dest} 1\n"),
        "{stderr}"
    );
    let notices = webhook.received();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let about = &notices[0].body["release_failed"];
    assert_eq!(about["failed"]["source"], "s3://rel-owed-back/web/2.tar");
    assert_eq!(about["running"]["source"], "s3://rel-owed-back/web/1.tar");
    assert_eq!(about["why"], "verify exited with 1");
    assert_eq!(
        f.states().await,
        pairs(&[("1", "current"), ("2", "failed")])
    );
    // Paid: the next start runs no hook and sends nothing.
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hooks().lines().count(), 4);
    assert_eq!(webhook.received().len(), 1);
}

/// Without a `verify` too: SIGTERM during the hook that announces a watcher's swap owes
/// it to the next start, which runs it first. (Before, the next start ran none.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_hook_of_a_swap_owes_it_to_the_next_start() {
    let f = Fixture::new("rel-owed-plain", 2, serde_json::json!({}), None).await;
    let held = Held::new();
    let hook_log = f.sb.path("hook.log");
    let hook = format!(
        "echo \"$BOOTSTAGE_CHANGED\" >> {}; {}",
        hook_log.display(),
        held.shell()
    );
    let hooks = || std::fs::read_to_string(&hook_log).unwrap_or_default();
    let w = Watching::start(&f.sb, &hook);
    assert_eq!(hooks(), "", "a first pass announces no swap");
    held.hold(true);
    f.point(2).await;
    held.started().await;
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    let dest = f.dest.display().to_string();
    assert_eq!(hooks(), format!("{dest}\n"));
    held.hold(false);
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hooks(), format!("{dest}\n{dest}\n"), "{stderr}");
    assert_eq!(serving(&f.dest), "2");
    let w = Watching::start(&f.sb, &hook);
    let (code, _, stderr) = w.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(hooks().lines().count(), 2, "paid once");
}
