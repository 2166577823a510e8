//! Telling the orchestrator: the real binary and the real Auto Scaling and CloudFormation
//! SDK clients against the lifecycle emulator (AWS Query protocol on loopback), after a
//! real metadata stage against the IMDS emulator.

use crate::common;

use std::time::Duration;

use common::faults::Faults;
use common::moto::moto;
use common::{Outcome, Sandbox, b64};
use lifecycle_emulator::{Call, Config as Orch, Emulator as Orchestrator, Group, Stack};
use serde_json::{Value, json};

const INSTANCE: &str = "i-0123456789abcdef0";

struct Rig {
    sb: Sandbox,
    orch: Orchestrator,
    _imds: imds_emulator::Emulator,
}

/// A launch hook with a 2 s heartbeat timeout (a heartbeat a second), a stack resource
/// waiting for one signal, and an instance whose parameters say `lifecycle`.
fn orchestrator(instances: &[&str]) -> Orch {
    Orch {
        groups: vec![Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 2.0,
            default_result: "ABANDON".into(),
            instances: instances.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }],
        stacks: vec![Stack {
            name: "web-stack".into(),
            resources: vec!["Group".into()],
            count: 1,
        }],
        ..Default::default()
    }
}

impl Rig {
    async fn new(lifecycle: Value, imds: imds_emulator::Config, orch: Orch) -> Rig {
        let params = json!({"bootstage": {"lifecycle": lifecycle}});
        let imds = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(b64(&params.to_string()).into()),
            ..imds
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(orch).await.unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&imds.url(), &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        Rig {
            sb,
            orch,
            _imds: imds,
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.sb.command(args);
        cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", self.orch.url())
            .env("AWS_ENDPOINT_URL_CLOUDFORMATION", self.orch.url())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    async fn run(&self, args: &[&str]) -> Outcome {
        common::run(self.command(args)).await
    }

    fn watch(&self) -> tokio::process::Child {
        self.command(&["lifecycle", "watch"]).spawn().unwrap()
    }

    /// Waits (at most 30 s: a limit, not a claim; one comes a second) until the group has
    /// taken `n` heartbeats.
    async fn heartbeats(&self, n: u64) {
        for _ in 0..600 {
            if self.orch.actions()[INSTANCE].heartbeats >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} heartbeats: {:?}", self.orch.calls());
    }

    /// The image's notice settings: run `command` with the notice on its stdin.
    fn notify_command(&self, command: String) {
        std::fs::write(
            self.sb.path("notify.json"),
            json!({ "command": command }).to_string(),
        )
        .unwrap();
    }

    fn record(&self) -> Value {
        serde_json::from_str(
            &self
                .sb
                .read("lifecycle/record.json")
                .expect("lifecycle/record.json"),
        )
        .unwrap()
    }
}

/// The signals, without heartbeats, as `Action Result group/hook instance` or
/// `SignalResource Status stack/resource unique-id`, sorted (they go out at once).
fn signals(calls: &[Call]) -> Vec<String> {
    let p = |c: &Call, k: &str| c.params.get(k).cloned().unwrap_or_default();
    let mut out: Vec<String> = calls
        .iter()
        .filter(|c| c.action != "RecordLifecycleActionHeartbeat")
        .map(|c| match c.action.as_str() {
            "CompleteLifecycleAction" => format!(
                "CompleteLifecycleAction {} {}/{} {} -> {}",
                p(c, "LifecycleActionResult"),
                p(c, "AutoScalingGroupName"),
                p(c, "LifecycleHookName"),
                p(c, "InstanceId"),
                c.status
            ),
            "SignalResource" => format!(
                "SignalResource {} {}/{} {} -> {}",
                p(c, "Status"),
                p(c, "StackName"),
                p(c, "LogicalResourceId"),
                p(c, "UniqueId"),
                c.status
            ),
            other => format!(
                "{other} -> {} {}",
                c.status,
                c.error.clone().unwrap_or_default()
            ),
        })
        .collect();
    out.sort();
    out
}

/// The watcher's exit, waited for at most `within`: a limit for a watcher that never ends,
/// not a claim about how soon (those are asserted where they are the claim).
async fn exits(child: tokio::process::Child, within: Duration) -> std::process::Output {
    tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("the watcher exited in time")
        .unwrap()
}

/// How many times `stderr` says a retry of Auto Scaling's `action` after the service
/// answered `code` (bootstage's words: "Auto Scaling ACTION: CODE: …; retrying in …").
fn retries(stderr: &str, action: &str, code: &str) -> usize {
    let said = format!("Auto Scaling {action}: {code}: ");
    stderr
        .lines()
        .filter(|l| l.contains(&said) && l.contains("; retrying in "))
        .count()
}

fn both() -> Value {
    json!({"asg": {"hook": "launch", "group": "web"},
           "cloudformation": {"stack": "web-stack", "resource": "Group"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn success_heartbeats_through_the_boot_then_one_continue_and_one_success() {
    let rig = Rig::new(both(), Default::default(), orchestrator(&[INSTANCE])).await;
    let watcher = rig.watch();
    // A slow first sync: the proxy holds the object's GET until the test lets it go.
    let bucket = moto().bucket("lifecycle-slow").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    let (hit, reached) = tokio::sync::oneshot::channel();
    let (release, go) = tokio::sync::oneshot::channel();
    let faults = Faults {
        hold: std::sync::Mutex::new(Some(("/lifecycle-slow/app/app.conf".into(), hit, go))),
        ..Default::default()
    };
    let proxy = common::faults::start(&moto().url, faults).await;
    let to = rig.sb.path("config");
    let mut sync = rig.sb.command(&[
        "s3-sync",
        "--from",
        "s3://lifecycle-slow/app/",
        "--to",
        to.to_str().unwrap(),
    ]);
    sync.envs(moto().env()).env("AWS_ENDPOINT_URL", &proxy.url);
    let syncing = tokio::spawn(common::run(sync));
    reached.await.unwrap();
    // Three heartbeats a second apart while the sync waits: the boot outlasts the hook's
    // 2 s timeout, and the action is still waiting for us.
    rig.heartbeats(3).await;
    assert_eq!(rig.orch.actions()[INSTANCE].outcome, None);
    release.send(()).unwrap();
    let synced = syncing.await.unwrap();
    assert_eq!(synced.code, 0, "{}", synced.stderr);
    assert_eq!(
        std::fs::read_to_string(to.join("app.conf")).unwrap(),
        "port=8080\n"
    );

    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let watched = exits(watcher, Duration::from_secs(30)).await;
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );

    let calls = rig.orch.calls();
    assert_eq!(
        signals(&calls),
        [
            "CompleteLifecycleAction CONTINUE web/launch i-0123456789abcdef0 -> 200",
            "DescribeLifecycleHooks -> 200 ",
            "SignalResource SUCCESS web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("CONTINUE", "complete")
    );
    // Every heartbeat went out before the completion; none after.
    let completed = calls
        .iter()
        .find(|c| c.action == "CompleteLifecycleAction")
        .unwrap()
        .at;
    assert!(
        calls
            .iter()
            .filter(|c| c.action == "RecordLifecycleActionHeartbeat")
            .all(|c| c.at < completed && c.status == 200)
    );

    let record = rig.record();
    assert_eq!(record["asg"]["result"], "CONTINUE");
    assert_eq!(record["asg"]["delivered"], true);
    assert_eq!(record["cloudformation"]["result"], "SUCCESS");
    let status = rig.run(&["status"]).await;
    let lines: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("lifecycle:"))
        .map(|l| l.split(" at ").next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            format!(
                "lifecycle: auto scaling: group web, hook launch, {} heartbeat(s)",
                record["heartbeats"]
            )
            .as_str(),
            "lifecycle: CompleteLifecycleAction CONTINUE",
            "lifecycle: SignalResource SUCCESS",
        ]
    );

    // A second signal is harmless: nothing is waiting for it (the stack is complete, and
    // says so in AWS's words), and that is success.
    let again = rig.run(&["lifecycle", "complete"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    for signal in ["CompleteLifecycleAction CONTINUE", "SignalResource SUCCESS"] {
        assert!(
            again
                .stderr
                .contains(&format!("{signal}: nothing was waiting for it")),
            "{}",
            again.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_sends_the_notice_first_then_abandon_and_failure() {
    let rig = Rig::new(both(), Default::default(), orchestrator(&[INSTANCE])).await;
    let stamp = rig.sb.path("notice-at");
    rig.notify_command(format!("date +%s%6N > {}", stamp.display()));
    let out = rig
        .run(&["notify", "failure", "--unit", "bootstage-s3-sync.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = rig.orch.calls();
    assert_eq!(
        signals(&calls),
        [
            "CompleteLifecycleAction ABANDON web/launch i-0123456789abcdef0 -> 200",
            "SignalResource FAILURE web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
    let notice_at: u64 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        calls.iter().all(|c| c.unix_usec > notice_at),
        "a signal went out before the notice: {notice_at} vs {calls:?}"
    );
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("ABANDON", "complete")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_keeps_the_instance_past_the_hook_timeout_until_release() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web", "on_failure": "hold", "hold_for": "1h"},
                           "cloudformation": {"stack": "web-stack", "resource": "Group"}});
    let rig = Rig::new(lifecycle, Default::default(), orchestrator(&[INSTANCE])).await;
    // The watcher's sd_notify messages, on a real datagram socket.
    let socket_path = rig.sb.path("notify.sock");
    let messages =
        common::notifications_until(&socket_path, "STATUS=held", Duration::from_secs(20));
    let mut watch = rig.command(&["lifecycle", "watch"]);
    watch.env("NOTIFY_SOCKET", &socket_path);
    let watcher = watch.spawn().unwrap();
    rig.heartbeats(1).await;
    let notice = rig.sb.path("notice.json");
    rig.notify_command(format!("cat > {}", notice.display()));
    let out = rig
        .run(&["notify", "failure", "--unit", "bootstage-s3-sync.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The notice says how long the instance is held.
    let notice: Value = serde_json::from_slice(&std::fs::read(&notice).unwrap()).unwrap();
    assert_eq!(notice["lifecycle"]["hold"], rig.record()["hold"]);
    // Held: no signal, and the hold is cut to the group's limit (100 × 2 s).
    assert_eq!(
        signals(&rig.orch.calls()),
        ["DescribeLifecycleHooks -> 200 "; 2]
    );
    let hold = &rig.record()["hold"];
    let clamped = hold["clamped"].as_str().unwrap();
    assert!(
        clamped.starts_with("hold_for 1h cut to 3m 1")
            && clamped.ends_with("the group ends a lifecycle action after 3m 20s"),
        "{clamped}"
    );
    let status = rig.run(&["status"]).await;
    assert!(
        status.stdout.contains(&format!(
            "lifecycle: held for debugging until {} (bootstage-s3-sync.service failed before it wrote a status record",
            hold["until"].as_str().unwrap()
        )),
        "{}",
        status.stdout
    );
    // systemd's STATUS= says so too.
    let messages = messages.join().unwrap();
    assert_eq!(
        messages.last().map(String::as_str),
        Some(
            format!(
                "STATUS=held for debugging until {}: bootstage release --abandon ends it\n",
                hold["until"].as_str().unwrap()
            )
            .as_str()
        ),
        "{messages:?}"
    );
    // READY before the first call to Auto Scaling (nothing waits on its answer), then
    // what it keeps alive.
    assert_eq!(
        messages[0], "READY=1\nSTATUS=looking up the group's lifecycle hook\n",
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("READY=1\nSTATUS=heartbeating launch every 1s"),
        "{messages:?}"
    );
    // Three more heartbeats: past the hook's 2 s timeout, the instance is still held.
    let before = rig.orch.actions()[INSTANCE].heartbeats;
    rig.heartbeats(before + 3).await;
    assert_eq!(rig.orch.actions()[INSTANCE].outcome, None);

    let released = rig.run(&["release", "--abandon"]).await;
    assert_eq!(released.code, 0, "{}", released.stderr);
    let watched = exits(watcher, Duration::from_secs(30)).await;
    assert!(watched.status.success());
    // The watcher's and the hold's DescribeLifecycleHooks, then the release's signals (a
    // heartbeat that crossed them found nothing waiting, and ended the watcher).
    assert_eq!(
        signals(&rig.orch.calls()),
        [
            "CompleteLifecycleAction ABANDON web/launch i-0123456789abcdef0 -> 200",
            "DescribeLifecycleHooks -> 200 ",
            "DescribeLifecycleHooks -> 200 ",
            "SignalResource FAILURE web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
    let again = rig.run(&["release", "--abandon"]).await;
    common::assert_exit(&again, 1, "no hold is in progress");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_ends_by_itself_at_hold_for() {
    let lifecycle =
        json!({"asg": {"hook": "launch", "group": "web", "on_failure": "hold", "hold_for": "2s"}});
    let rig = Rig::new(lifecycle, Default::default(), orchestrator(&[INSTANCE])).await;
    let watcher = rig.watch();
    rig.heartbeats(1).await;
    let out = rig
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let watched = exits(watcher, Duration::from_secs(30)).await;
    assert!(watched.status.success());
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("ABANDON", "complete")
    );
    assert!(
        String::from_utf8_lossy(&watched.stderr)
            .contains("the hold is over: abandoning the instance")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_is_found_from_the_tag_else_by_describe() {
    let lifecycle = json!({"asg": {"hook": "launch"}});
    let tagged = imds_emulator::Config {
        tags: Some([("aws:autoscaling:groupName".to_string(), "web".to_string())].into()),
        ..Default::default()
    };
    let rig = Rig::new(lifecycle.clone(), tagged, orchestrator(&[INSTANCE])).await;
    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        signals(&rig.orch.calls()),
        ["CompleteLifecycleAction CONTINUE web/launch i-0123456789abcdef0 -> 200"]
    );

    // No tag, or a tag that is no group name (a line break in it): the group is asked.
    let forged = imds_emulator::Config {
        tags: Some(
            [(
                "aws:autoscaling:groupName".to_string(),
                "web\nforged".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    for imds in [Default::default(), forged] {
        let rig = Rig::new(lifecycle.clone(), imds, orchestrator(&[INSTANCE])).await;
        let out = rig.run(&["notify", "ready"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!out.stderr.contains("forged"), "{}", out.stderr);
        assert_eq!(
            signals(&rig.orch.calls()),
            [
                "CompleteLifecycleAction CONTINUE web/launch i-0123456789abcdef0 -> 200",
                "DescribeAutoScalingInstances -> 200 ",
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_active_lifecycle_action_is_success_and_the_watcher_stops() {
    // The group has no action for this instance: a reboot, or a hook that already ended.
    let rig = Rig::new(both(), Default::default(), orchestrator(&[])).await;
    let watched = exits(rig.watch(), Duration::from_secs(30)).await;
    assert!(watched.status.success());
    assert!(
        String::from_utf8_lossy(&watched.stderr).contains("no lifecycle action is in progress"),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("CompleteLifecycleAction CONTINUE: nothing was waiting for it"),
        "{}",
        out.stderr
    );
    let record = rig.record();
    let note = record["asg"]["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("ValidationError: "), "{note}");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_retried_and_complete_on_app_waits_for_the_app() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web"}, "complete_on": "app"});
    // No watcher here: a hook timeout that outlasts the throttled retries.
    let mut orch = orchestrator(&[INSTANCE]);
    orch.groups[0].heartbeat_timeout = 60.0;
    let rig = Rig::new(lifecycle, Default::default(), orch).await;
    // The ready unit leaves it to the app.
    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(rig.orch.calls().is_empty());
    rig.orch.throttle_next(3);
    let out = rig.run(&["lifecycle", "complete"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = rig.orch.calls();
    let answers: Vec<_> = calls
        .iter()
        .map(|c| format!("{} {}", c.action, c.error.as_deref().unwrap_or("ok")))
        .collect();
    assert_eq!(
        answers,
        [
            "CompleteLifecycleAction Throttling",
            "CompleteLifecycleAction Throttling",
            "CompleteLifecycleAction Throttling",
            "CompleteLifecycleAction ok",
        ]
    );
    assert_eq!(
        retries(&out.stderr, "CompleteLifecycleAction", "Throttling"),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_watcher_at_once() {
    let rig = Rig::new(both(), Default::default(), orchestrator(&[INSTANCE])).await;
    let watcher = rig.watch();
    rig.heartbeats(1).await;
    let pid = nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32);
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let watched = exits(watcher, Duration::from_secs(30)).await;
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    // The signal ended it (its own words), and at once: 2 s is about 20 times an idle
    // exit, room for a loaded machine; a watcher that ignored SIGTERM would heartbeat on.
    assert!(stderr.contains("stopping the heartbeats"), "{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// The backstop: a stage failed and nothing abandoned or held the instance (the failure
/// unit never ran, or could not reach AWS). The watcher abandons it itself once the failure
/// grace is over (120 s; 3 s here, through the hidden `--failure-grace`), and not before:
/// the ABANDON goes out at least 3 s after the failing stage started, by the emulator's
/// clock, while the heartbeats go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_nobody_acted_on_is_abandoned_by_the_watcher_after_the_grace() {
    let rig = Rig::new(
        json!({"asg": {"hook": "launch", "group": "web"}}),
        Default::default(),
        orchestrator(&[INSTANCE]),
    )
    .await;
    let watcher = rig
        .command(&["lifecycle", "--failure-grace", "3s", "watch"])
        .spawn()
        .unwrap();
    rig.heartbeats(1).await;
    // A stage fails for real (a hook that exits 3), and no failure unit follows.
    let hook = rig.sb.path("hooks/per-boot.d/10-fails");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let failing = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let hooks = rig.run(&["hooks"]).await;
    common::assert_exit(&hooks, 70, "10-fails");
    let watched = exits(watcher, Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "a stage failed 3s ago and the instance was neither abandoned nor held: abandoning it"
        ),
        "{stderr}"
    );
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("ABANDON", "complete")
    );
    let calls = rig.orch.calls();
    let abandoned = calls
        .iter()
        .find(|c| c.action == "CompleteLifecycleAction")
        .unwrap()
        .unix_usec;
    let after = Duration::from_micros(abandoned).saturating_sub(failing);
    assert!(
        after >= Duration::from_secs(3),
        "abandoned {after:?} after the stage began to fail"
    );
    let heartbeats_meanwhile = calls
        .iter()
        .filter(|c| {
            c.action == "RecordLifecycleActionHeartbeat"
                && Duration::from_micros(c.unix_usec) > failing
        })
        .count();
    assert!(
        heartbeats_meanwhile >= 1,
        "the heartbeats went on during the grace: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn target_lifecycle_state_is_a_fact() {
    let imds = imds_emulator::Config {
        target_lifecycle_state: Some("InService".into()),
        ..Default::default()
    };
    let rig = Rig::new(json!(null), imds, orchestrator(&[])).await;
    let env = rig.sb.read("params.env").unwrap();
    assert!(
        env.contains("\nBOOTSTAGE_TARGET_LIFECYCLE_STATE=\"InService\"\n"),
        "{env}"
    );
    let instance: Value = serde_json::from_str(&rig.sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(instance["target_lifecycle_state"], "InService");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_signal_is_kept_shown_and_sent_again_by_the_watcher() {
    let rig = Rig::new(both(), Default::default(), orchestrator(&[INSTANCE])).await;
    rig.orch.deny_next(2);
    let out = rig.run(&["notify", "ready"]).await;
    common::assert_exit(
        &out,
        75,
        "CompleteLifecycleAction CONTINUE: not delivered: Auto Scaling CompleteLifecycleAction: AccessDenied: ",
    );
    let status = rig.run(&["status"]).await;
    let lines: Vec<&str> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("lifecycle:"))
        .map(|l| l.split(" at ").next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "lifecycle: auto scaling: group web, hook launch, 0 heartbeat(s)",
            "lifecycle: CompleteLifecycleAction CONTINUE",
            "lifecycle: SignalResource SUCCESS",
        ],
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains(": NOT delivered: Auto Scaling CompleteLifecycleAction: AccessDenied"),
        "{}",
        status.stdout
    );
    // The watcher keeps the action alive and sends the signals again.
    let watched = exits(rig.watch(), Duration::from_secs(30)).await;
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let delivered: Vec<_> = rig
        .orch
        .calls()
        .into_iter()
        .filter(|c| c.status == 200)
        .collect();
    assert_eq!(
        signals(&delivered)
            .into_iter()
            .filter(|s| !s.starts_with("Describe"))
            .collect::<Vec<_>>(),
        [
            "CompleteLifecycleAction CONTINUE web/launch i-0123456789abcdef0 -> 200",
            "SignalResource SUCCESS web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
    assert_eq!(rig.record()["asg"]["delivered"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn release_continue_puts_a_held_instance_in_service() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web", "on_failure": "hold"},
                           "cloudformation": {"stack": "web-stack", "resource": "Group"}});
    let mut orch = orchestrator(&[INSTANCE]);
    orch.groups[0].heartbeat_timeout = 60.0;
    let rig = Rig::new(lifecycle, Default::default(), orch).await;
    let out = rig
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        rig.record()["hold"]["clamped"].is_null(),
        "1 h fits in 100 × 60 s"
    );
    let released = rig.run(&["release", "--continue"]).await;
    assert_eq!(released.code, 0, "{}", released.stderr);
    assert_eq!(
        signals(&rig.orch.calls()),
        [
            "CompleteLifecycleAction CONTINUE web/launch i-0123456789abcdef0 -> 200",
            "DescribeLifecycleHooks -> 200 ",
            "SignalResource SUCCESS web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_never_completes_is_abandoned_at_ready_within() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web", "ready_within": "2s"}});
    let rig = Rig::new(lifecycle, Default::default(), orchestrator(&[INSTANCE])).await;
    let watched = exits(rig.watch(), Duration::from_secs(30)).await;
    assert!(watched.status.success());
    assert!(
        String::from_utf8_lossy(&watched.stderr)
            .contains("no completion within ready_within (2s): abandoning the instance")
    );
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("ABANDON", "complete")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_with_an_unknown_heartbeat_timeout_is_cut_to_the_shortest_limit() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web", "on_failure": "hold"}});
    let mut orch = orchestrator(&[INSTANCE]);
    orch.groups[0].heartbeat_timeout = 7200.0;
    let rig = Rig::new(lifecycle, Default::default(), orch).await;
    // DescribeLifecycleHooks is refused: the hook may have AWS's shortest timeout, 30 s,
    // whose limit (100 × 30 s = 50 min) a 1 h hold would outlast.
    rig.orch.deny_next(1);
    let out = rig
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let clamped = rig.record()["hold"]["clamped"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        clamped.starts_with("hold_for 1h cut to 49m")
            && clamped.ends_with("the group ends a lifecycle action after 50m"),
        "{clamped}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_lock_held_elsewhere_is_waited_for_5_s_not_forever() {
    let rig = Rig::new(
        json!({"asg": {"hook": "launch", "group": "web"}}),
        Default::default(),
        orchestrator(&[INSTANCE]),
    )
    .await;
    let dir = rig.sb.state().join("lifecycle");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let out = rig.run(&["lifecycle", "complete"]).await;
    common::assert_exit(
        &out,
        73,
        "another process held the lifecycle record's lock for 5 s",
    );
    drop(lock);
}

/// Another instance of the same group, for signals the test sends itself.
const OTHER: &str = "i-0fedcba9876543210";

/// The real CloudFormation client, pointed at the emulator as bootstage's is (the IMDS
/// emulator's region), with the SDK's retries off: a test sees every answer.
fn cloudformation(orch: &Orchestrator) -> aws_sdk_cloudformation::Client {
    use aws_sdk_cloudformation::config;
    let config = aws_sdk_cloudformation::Config::builder()
        .behavior_version(config::BehaviorVersion::latest())
        .region(config::Region::new("eu-west-1"))
        .endpoint_url(orch.url())
        .credentials_provider(config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .retry_config(config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_cloudformation::Client::from_conf(config)
}

/// The real Auto Scaling client, as [`cloudformation`].
fn autoscaling(orch: &Orchestrator) -> aws_sdk_autoscaling::Client {
    use aws_sdk_autoscaling::config;
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(config::BehaviorVersion::latest())
        .region(config::Region::new("eu-west-1"))
        .endpoint_url(orch.url())
        .credentials_provider(config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .retry_config(config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_autoscaling::Client::from_conf(config)
}

/// A failed call's HTTP status, code and message, as the SDK read them.
fn refusal<E>(
    e: aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> (u16, String, String)
where
    E: aws_sdk_cloudformation::error::ProvideErrorMetadata + std::fmt::Debug,
{
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let service = e.as_service_error().expect("a service error");
    (
        status,
        service.code().unwrap_or_default().to_string(),
        service.message().unwrap_or_default().to_string(),
    )
}

/// Whether `message` is AWS's refusal of `action` (on `resource`, for an action that
/// takes one) to an assumed role.
fn denied(message: &str, action: &str, resource: Option<&str>) -> bool {
    let on = resource
        .map(|r| format!(" on resource: {r}"))
        .unwrap_or_default();
    let tail = format!(
        " is not authorized to perform: {action}{on} because no identity-based policy allows the {action} action"
    );
    message.starts_with("User: arn:aws:sts::123456789012:assumed-role/") && message.ends_with(&tail)
}

/// `SignalResource` from one instance to the stack's resource.
async fn signal_from(
    cfn: &aws_sdk_cloudformation::Client,
    unique_id: &str,
) -> Result<
    aws_sdk_cloudformation::operation::signal_resource::SignalResourceOutput,
    aws_smithy_runtime_api::client::result::SdkError<
        aws_sdk_cloudformation::operation::signal_resource::SignalResourceError,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
> {
    cfn.signal_resource()
        .stack_name("web-stack")
        .logical_resource_id("Group")
        .unique_id(unique_id)
        .status(aws_sdk_cloudformation::types::ResourceSignalStatus::Success)
        .send()
        .await
}

/// CloudFormation counts one signal per `UniqueId`: the same instance signalling twice
/// (a `lifecycle complete` after the ready unit's) is accepted and counted once, so a
/// resource that waits for two signals still waits for another instance's.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_unique_id_is_accepted_and_counted_once() {
    let mut orch = orchestrator(&[INSTANCE]);
    orch.stacks[0].count = 2;
    let rig = Rig::new(both(), Default::default(), orch).await;
    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = rig.run(&["lifecycle", "complete"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("SignalResource SUCCESS: delivered"),
        "{}",
        again.stderr
    );
    let counted = |rig: &Rig| {
        let stacks = rig.orch.stacks();
        let stack = &stacks["web-stack"];
        let ids: Vec<String> = stack.resources["Group"]
            .signals
            .iter()
            .map(|s| s.unique_id.clone())
            .collect();
        (stack.status(), ids)
    };
    assert_eq!(
        signals(&rig.orch.calls())
            .into_iter()
            .filter(|s| s.starts_with("SignalResource"))
            .collect::<Vec<_>>(),
        ["SignalResource SUCCESS web-stack/Group i-0123456789abcdef0 -> 200"; 2]
    );
    assert_eq!(
        counted(&rig),
        ("CREATE_IN_PROGRESS", vec![INSTANCE.to_string()])
    );
    let cfn = cloudformation(&rig.orch);
    signal_from(&cfn, OTHER)
        .await
        .expect("the resource still waits: the repeat was not a second signal");
    assert_eq!(
        counted(&rig),
        (
            "CREATE_COMPLETE",
            vec![INSTANCE.to_string(), OTHER.to_string()]
        )
    );
    // Two instances have signalled: the stack is complete, and takes no more.
    let late = signal_from(&cfn, "i-0aaaaaaaaaaaaaaaa").await.unwrap_err();
    let (status, code, _) = refusal(late);
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
}

/// The emulator answers as AWS does, in AWS's words (quoted from AWS's answers in public
/// reports, not ours): these are what bootstage and its operators read.
#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_answers_in_aws_words() {
    let orch = Orchestrator::start(orchestrator(&[INSTANCE]))
        .await
        .unwrap();
    let cfn = cloudformation(&orch);
    let asg = autoscaling(&orch);

    // A stack that has all its signals is complete, and says so by its ARN.
    signal_from(&cfn, INSTANCE).await.unwrap();
    let (status, code, message) = refusal(signal_from(&cfn, OTHER).await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    let id = message
        .strip_prefix("Stack arn:aws:cloudformation:eu-west-1:123456789012:stack/web-stack/")
        .and_then(|m| m.strip_suffix(" is in CREATE_COMPLETE state and cannot be signaled"))
        .unwrap_or_else(|| panic!("{message}"));
    assert!(
        id.len() == 36 && id.split('-').map(str::len).eq([8, 4, 4, 4, 12]),
        "a stack id is a UUID: {message}"
    );

    // A refusal names the caller and, for an action on a resource, the resource.
    orch.deny_next(1);
    let e = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name("web")
        .lifecycle_hook_name("launch")
        .instance_id(INSTANCE)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .unwrap_err();
    let (status, code, message) = refusal(e);
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    let group = "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:";
    assert!(
        message.contains(&format!(" on resource: {group}"))
            && message.contains(":autoScalingGroupName/web because"),
        "{message}"
    );
    let group_arn = message
        .split(" on resource: ")
        .nth(1)
        .and_then(|m| m.split(' ').next())
        .unwrap()
        .to_string();
    assert!(
        denied(
            &message,
            "autoscaling:CompleteLifecycleAction",
            Some(&group_arn)
        ),
        "{message}"
    );
    // Describe calls take no resource, and their refusal names none.
    orch.deny_next(1);
    let e = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("web")
        .send()
        .await
        .unwrap_err();
    let (status, code, message) = refusal(e);
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    assert!(
        denied(&message, "autoscaling:DescribeLifecycleHooks", None),
        "{message}"
    );
    orch.deny_next(1);
    let (status, code, message) = refusal(signal_from(&cfn, OTHER).await.unwrap_err());
    assert_eq!((status, code.as_str()), (403, "AccessDenied"));
    let stack_arn = format!("arn:aws:cloudformation:eu-west-1:123456789012:stack/web-stack/{id}");
    assert!(
        denied(&message, "cloudformation:SignalResource", Some(&stack_arn)),
        "{message}"
    );

    // Another update to the group is pending: Auto Scaling's fault, as its model has it
    // (the SDK knows it by its code). CloudFormation has no such fault: its calls pass.
    orch.contend_next(1);
    let (status, code, _) = refusal(signal_from(&cfn, OTHER).await.unwrap_err());
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    let heartbeat = || {
        asg.record_lifecycle_action_heartbeat()
            .auto_scaling_group_name("web")
            .lifecycle_hook_name("launch")
            .instance_id(INSTANCE)
            .send()
    };
    let e = heartbeat().await.unwrap_err();
    assert!(
        e.as_service_error()
            .is_some_and(|s| s.is_resource_contention_fault()),
        "{e:?}"
    );
    let (status, code, _) = refusal(e);
    assert_eq!((status, code.as_str()), (500, "ResourceContention"));
    heartbeat()
        .await
        .expect("one contention, then the heartbeat");
}

/// Auto Scaling's `ResourceContention` (another update to the group is pending; HTTP 500)
/// is retried under the throttle policy until the call goes through.
#[tokio::test(flavor = "multi_thread")]
async fn resource_contention_is_retried_until_the_call_goes_through() {
    let lifecycle = json!({"asg": {"hook": "launch", "group": "web"}});
    // A hook timeout that outlasts the retries.
    let mut orch = orchestrator(&[INSTANCE]);
    orch.groups[0].heartbeat_timeout = 60.0;
    let rig = Rig::new(lifecycle, Default::default(), orch).await;
    rig.orch.contend_next(3);
    let out = rig.run(&["lifecycle", "complete"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers: Vec<_> = rig
        .orch
        .calls()
        .iter()
        .map(|c| {
            let answer = c.error.as_deref().unwrap_or("ok");
            format!("{} {} {answer}", c.action, c.status)
        })
        .collect();
    assert_eq!(
        answers,
        [
            "CompleteLifecycleAction 500 ResourceContention",
            "CompleteLifecycleAction 500 ResourceContention",
            "CompleteLifecycleAction 500 ResourceContention",
            "CompleteLifecycleAction 200 ok",
        ]
    );
    assert_eq!(
        retries(&out.stderr, "CompleteLifecycleAction", "ResourceContention"),
        3,
        "{}",
        out.stderr
    );
    let outcome = rig.orch.actions()[INSTANCE].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("CONTINUE", "complete")
    );
    assert_eq!(rig.record()["asg"]["delivered"], true);
}

/// `"lifecycle": null` in user-data is no setting, as the metadata stage reads it: the
/// notice and the watcher use the image's file (they refused the null with 65).
#[tokio::test(flavor = "multi_thread")]
async fn a_null_lifecycle_in_user_data_is_absent_and_the_images_file_applies() {
    let rig = Rig::new(Value::Null, Default::default(), orchestrator(&[INSTANCE])).await;
    let params: Value = serde_json::from_str(&rig.sb.read("params.json").unwrap()).unwrap();
    assert_eq!(
        params["bootstage"].get("lifecycle"),
        Some(&Value::Null),
        "the parameters hold the null"
    );
    std::fs::write(rig.sb.path("lifecycle-image.json"), both().to_string()).unwrap();
    let out = rig
        .run(&["notify", "failure", "--unit", "bootstage-s3-sync.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        signals(&rig.orch.calls()),
        [
            "CompleteLifecycleAction ABANDON web/launch i-0123456789abcdef0 -> 200",
            "SignalResource FAILURE web-stack/Group i-0123456789abcdef0 -> 200",
        ]
    );
    let watched = exits(rig.watch(), Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{:?}: {stderr}", watched.status);
}
