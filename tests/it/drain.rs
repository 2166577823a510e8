//! Leaving gracefully: the real `bootstage lifecycle watch` against the IMDS emulator (its
//! four later-life paths switched as a test goes), the lifecycle emulator (a termination
//! hook, `Terminating:Wait` on `terminate`, exactly-once completions) and a webhook, with
//! real hooks in the sandbox's hook dirs. Units are stopped through a `systemctl` double
//! that records each call (the hidden `--systemctl`): no systemd runs here; the boot test
//! (`boot_drain.rs`) stops a real unit.
//!
//! Order is read from timestamps: the hooks write `date +%s%6N`, the emulators record the
//! wall clock of each call and each IMDS change. Waits are for events, each bounded by a
//! limit for a loaded 2-core machine, not a claim of speed.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::webhook::Webhook;
use common::{Sandbox, b64};
use lifecycle_emulator::{Call, Config as Orch, Emulator as Orchestrator, Group, Hook, Stack};
use serde_json::{Value, json};

const INSTANCE: &str = "i-0123456789abcdef0";
const TARGET: &str = "autoscaling/target-lifecycle-state";
const SPOT: &str = "spot/instance-action";
const REBALANCE: &str = "events/recommendations/rebalance";
const MAINTENANCE: &str = "events/maintenance/scheduled";

struct Rig {
    sb: Sandbox,
    imds: imds_emulator::Emulator,
    orch: Orchestrator,
    webhook: Webhook,
}

/// A group `web` with the launch hook `launch` and the termination hook `leave`
/// (`heartbeat_timeout` seconds), this instance in its launch action.
fn group(termination_timeout: f64) -> Orch {
    Orch {
        groups: vec![Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 60.0,
            instances: vec![INSTANCE.into()],
            termination_hook: Some(Hook {
                name: "leave".into(),
                heartbeat_timeout: termination_timeout,
                ..Default::default()
            }),
            ..Default::default()
        }],
        stacks: Vec::<Stack>::new(),
        ..Default::default()
    }
}

fn unix_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Waits until `done()` holds, at most 60 s (a limit, not a claim).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 60 s: {what}");
}

impl Rig {
    /// The metadata stage has run with `bootstage.lifecycle` = `lifecycle` and the notices
    /// going to the webhook.
    async fn new(lifecycle: Value, orch: Orch) -> Rig {
        let webhook = Webhook::start(&[]).await;
        let params = json!({"bootstage": {"lifecycle": lifecycle, "notify": {"url": webhook.url}}});
        let imds = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(b64(&params.to_string()).into()),
            target_lifecycle_state: Some("InService".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(orch).await.unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&imds.url(), &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        Rig {
            sb,
            imds,
            orch,
            webhook,
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
            // The SDK never reaches for IMDS; the watcher is pointed at the emulator.
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    /// The watcher, looking at IMDS every 100 ms, stopping units through the double.
    fn watch(&self) -> tokio::process::Child {
        let url = self.imds.url();
        let systemctl = self.systemctl();
        self.command(&[
            "lifecycle",
            "watch",
            "--imds-endpoint",
            &url,
            "--poll-every",
            "100ms",
            "--systemctl",
            systemctl.to_str().unwrap(),
        ])
        .spawn()
        .unwrap()
    }

    /// A root-owned executable hook in the sandbox's hook dir (`drain.d/10-x`).
    fn hook(&self, rel: &str, script: &str) {
        let path = self.sb.path("hooks").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    /// A `systemctl` double: `stop [--no-block] -- UNIT` appends its arguments and
    /// `START END` (microseconds) to `systemctl.log`, taking 300 ms as a unit's stop would.
    fn systemctl(&self) -> PathBuf {
        let path = self.sb.path("systemctl");
        if !path.exists() {
            let log = self.sb.path("systemctl.log");
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\n[ \"$1\" = stop ] || exit 2\nstart=$(date +%s%6N)\nsleep 0.3\necho \"$* $start $(date +%s%6N)\" >> {}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        path
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.sb.path(name)).ok()
    }

    fn stamp(&self, name: &str) -> u64 {
        self.file(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .trim()
            .parse()
            .unwrap()
    }

    fn record(&self) -> Value {
        serde_json::from_str(&self.sb.read("lifecycle/record.json").unwrap_or_default())
            .unwrap_or(Value::Null)
    }

    /// IMDS GETs of one later-life path so far.
    fn polls(&self, path: &str) -> usize {
        let path = format!("/latest/meta-data/{path}");
        self.imds
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }

    /// Waits until the watcher has looked at IMDS `n` more times.
    async fn looks(&self, n: usize) {
        let before = self.polls(TARGET);
        until(&format!("{n} more looks at IMDS"), || {
            self.polls(TARGET) >= before + n
        })
        .await;
    }

    /// The wall clock of the IMDS change of `path` (the last one), in microseconds.
    fn changed_at(&self, path: &str) -> u64 {
        let change = self
            .imds
            .changes()
            .into_iter()
            .rev()
            .find(|c| c.path == path)
            .expect("the change is logged");
        (change.unix * 1e6) as u64
    }

    /// The environment a hook saved with `env -0 > NAME`.
    fn env(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        std::fs::read(self.sb.path(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .split(|b| *b == 0)
            .filter_map(|e| {
                let e = String::from_utf8(e.to_vec()).ok()?;
                let (k, v) = e.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// The completions of `hook`, as `RESULT -> status`.
fn completions<'a>(calls: &'a [Call], hook: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| {
            c.action == "CompleteLifecycleAction"
                && c.params.get("LifecycleHookName").map(String::as_str) == Some(hook)
        })
        .collect()
}

async fn exits(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the watcher exited within 60 s")
        .unwrap()
}

fn rfc3339_unix(text: &str) -> u64 {
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Scale-in: the state switches to `Terminated`; drain.d runs with its reason and an RFC
/// 3339 deadline (`drain.within` from the change), `status` shows the drain meanwhile;
/// the units are stopped in order after the hook; no completion is tried while the group
/// has not put the instance in `Terminating:Wait`; then exactly one CONTINUE for the
/// termination hook, after the hook's end and the stops. A Spot notice during the drain
/// starts no second drain, nor does a restarted watcher.
#[tokio::test(flavor = "multi_thread")]
async fn scale_in_drains_once_then_one_continue_only_in_terminating_wait() {
    let lifecycle = json!({
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"stop": ["myapp.service", "worker@1.service"], "within": "60s"}
    });
    let rig = Rig::new(lifecycle, group(60.0)).await;
    let status_bin = common::BIN;
    rig.hook(
        "drain.d/10-drain",
        &format!(
            "date +%s%6N > {dir}/hook-start\nenv -0 > {dir}/hook-env\necho x >> {dir}/drains\n{status_bin} --state-dir \"$BOOTSTAGE_STATE_DIR\" status > {dir}/status-during || true\nsleep 1\ndate +%s%6N > {dir}/hook-end",
            dir = rig.sb.path("").display()
        ),
    );
    // The launch is behind it: the app completed it.
    let out = common::run(rig.command(&["lifecycle", "complete"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let watcher = rig.watch();
    rig.looks(3).await;
    rig.imds.set_meta_data(TARGET, Some("Terminated"));
    let changed = rig.changed_at(TARGET);
    until("the drain hook's end", || rig.file("hook-end").is_some()).await;
    rig.imds.set_meta_data(
        SPOT,
        Some(r#"{"action": "terminate", "time": "2099-01-01T00:00:00Z"}"#),
    );
    until("the units stopped", || {
        rig.file("systemctl.log")
            .is_some_and(|l| l.lines().count() == 2)
    })
    .await;
    until("the drain recorded as done", || {
        rig.record()["drain"]["done"].is_string()
    })
    .await;
    // The group has not moved the instance to Terminating:Wait: the watcher asks where it
    // is, and does not complete.
    let asked = |rig: &Rig| {
        rig.orch
            .calls()
            .iter()
            .filter(|c| c.action == "DescribeAutoScalingInstances")
            .count()
    };
    let before = asked(&rig);
    until("two more looks at the group", || asked(&rig) >= before + 2).await;
    assert_eq!(completions(&rig.orch.calls(), "leave").len(), 0);
    let terminated = unix_usec();
    rig.orch.terminate(INSTANCE).unwrap();
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");

    // The hook: its reason and deadline, once.
    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "scale-in", "{stderr}");
    assert_eq!(env["BOOTSTAGE_HOOK"], "drain.d/10-drain");
    let deadline = rfc3339_unix(&env["BOOTSTAGE_DRAIN_DEADLINE"]);
    let from_change = deadline as i64 - (changed / 1_000_000) as i64;
    assert!(
        (59..=65).contains(&from_change),
        "the deadline is within (60 s) after the change: {from_change} s"
    );
    assert_eq!(rig.file("drains").unwrap(), "x\n", "one drain: {stderr}");
    let hook_start = rig.stamp("hook-start");
    let hook_end = rig.stamp("hook-end");
    assert!(hook_start > changed);
    // `status` during the drain shows it and its deadline.
    let during = rig.file("status-during").unwrap();
    assert!(
        during.contains(&format!(
            "lifecycle: draining (scale-in: target lifecycle state Terminated) until {}",
            env["BOOTSTAGE_DRAIN_DEADLINE"]
        )),
        "{during}"
    );

    // The units: in order, after the hook.
    let stops: Vec<(String, u64, u64)> = rig
        .file("systemctl.log")
        .unwrap()
        .lines()
        .map(|l| {
            // `stop -- UNIT START END`
            let f: Vec<&str> = l.split(' ').collect();
            let n = f.len();
            (
                f[..n - 2].join(" "),
                f[n - 2].parse().unwrap(),
                f[n - 1].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stops.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["stop -- myapp.service", "stop -- worker@1.service"]
    );
    assert!(stops[0].1 >= hook_end && stops[1].1 >= stops[0].2);

    // One CONTINUE for the termination hook, after the hook, the stops and terminate().
    let calls = rig.orch.calls();
    let done = completions(&calls, "leave");
    assert_eq!(done.len(), 1, "{calls:?}");
    assert_eq!(done[0].params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(done[0].status, 200);
    assert!(done[0].unix_usec > hook_end && done[0].unix_usec > stops[1].2);
    assert!(done[0].unix_usec > terminated);
    let actions = &rig.orch.actions()[INSTANCE];
    assert_eq!(actions.state, "Terminating:Proceed");
    let leaving = actions.actions.last().unwrap();
    assert_eq!(
        (
            leaving.kind.as_str(),
            leaving.result.as_deref(),
            leaving.by.as_deref(),
            leaving.refused
        ),
        ("termination", Some("CONTINUE"), Some("complete"), 0)
    );

    // The record and `status` after.
    let record = rig.record();
    assert_eq!(record["drain"]["reason"], "scale-in");
    assert_eq!(
        record["drain"]["stopped"],
        json!(["myapp.service", "worker@1.service"])
    );
    assert_eq!(record["termination"]["result"], "CONTINUE");
    assert_eq!(record["termination"]["delivered"], true);
    let status = common::run(rig.command(&["status"])).await;
    assert!(
        status
            .stdout
            .contains("lifecycle: drained (scale-in: target lifecycle state Terminated)"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("lifecycle: CompleteLifecycleAction (termination hook) CONTINUE at "),
        "{}",
        status.stdout
    );

    // The notice: one drain event, with the reason and the deadline.
    let notices = rig.webhook.wait_for(1).await;
    let drain: Vec<_> = notices
        .iter()
        .filter(|n| n.body["event"] == "drain")
        .collect();
    assert_eq!(drain.len(), 1);
    assert_eq!(drain[0].body["drain"]["reason"], "scale-in");
    assert_eq!(
        drain[0].body["drain"]["deadline"],
        env["BOOTSTAGE_DRAIN_DEADLINE"].as_str()
    );

    // A watcher started again (a restart) drains nothing and completes nothing again.
    let again = exits(rig.watch()).await;
    assert!(again.status.success());
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    assert_eq!(completions(&rig.orch.calls(), "leave").len(), 1);
}

/// A Spot interruption: the drain's deadline is the notice's time less `spot_margin`, and
/// the drain is over by then. A hook that would outlast it is killed at the deadline:
/// the overrun is logged and noticed (`"stage": "drain"`), and the units are still
/// stopped. No auto scaling group here: nothing to complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_spot_notice_drains_within_its_time_less_the_margin() {
    let lifecycle = json!({"drain": {"stop": ["myapp.service"], "spot_margin": "10s"}});
    let rig = Rig::new(lifecycle, group(60.0)).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-record",
        &format!(
            "env -0 > {d}/hook-env\ndate +%s%6N > {d}/hook-end",
            d = dir.display()
        ),
    );
    rig.hook("drain.d/20-slow", "exec sleep 120");
    let watcher = rig.watch();
    rig.looks(3).await;
    // Interrupted in 16 s: 6 s to drain, whole seconds as AWS writes them.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now + 16));
    rig.imds.set_meta_data(
        SPOT,
        Some(&json!({"action": "terminate", "time": time.to_string()}).to_string()),
    );
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    let over = unix_usec();
    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "spot");
    assert_eq!(env["BOOTSTAGE_SPOT_ACTION"], "terminate");
    let deadline = rfc3339_unix(&env["BOOTSTAGE_DRAIN_DEADLINE"]);
    assert_eq!(deadline, now + 6, "the notice's time less the margin");
    // Over by the deadline (and the stop that follows the killed hook takes 300 ms):
    // 3 s past it is room for a loaded machine, well before the interruption.
    assert!(
        over / 1_000_000 <= deadline + 3,
        "the watcher ended {} s after the deadline",
        (over / 1_000_000) as i64 - deadline as i64
    );
    assert!(rig.stamp("hook-end") / 1_000_000 <= deadline);
    assert!(
        stderr.contains("drain.d/20-slow did not finish within the drain's deadline"),
        "{stderr}"
    );
    let stops = rig.file("systemctl.log").unwrap_or_default();
    assert!(
        stops.starts_with("stop --no-block -- myapp.service "),
        "past the deadline the stop is queued all the same: {stops}"
    );
    let notices = rig.webhook.wait_for(2).await;
    let failure = notices
        .iter()
        .find(|n| n.body["event"] == "failure")
        .expect("a failure notice");
    assert_eq!(failure.body["stage"], "drain");
    assert_eq!(failure.body["drain"]["reason"], "spot");
    assert!(
        failure.body["error"]
            .as_str()
            .unwrap()
            .contains("drain.d/20-slow did not finish within the drain's deadline"),
        "{}",
        failure.body
    );
    assert!(rig.record()["drain"]["error"].is_string());
}

/// A Spot hibernation resumes this same boot, so the drain runs drain.d (with the action
/// in its environment) and stops no unit: nothing would start the app again.
#[tokio::test(flavor = "multi_thread")]
async fn a_spot_hibernation_runs_drain_hooks_and_stops_no_unit() {
    let lifecycle = json!({"drain": {"stop": ["myapp.service"], "spot_margin": "10s"}});
    let rig = Rig::new(lifecycle, group(60.0)).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-record",
        &format!("env -0 > {d}/hook-env", d = dir.display()),
    );
    let watcher = rig.watch();
    rig.looks(3).await;
    let time = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(120));
    rig.imds.set_meta_data(
        SPOT,
        Some(&json!({"action": "hibernate", "time": time.to_string()}).to_string()),
    );
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "spot");
    assert_eq!(env["BOOTSTAGE_SPOT_ACTION"], "hibernate");
    assert_eq!(rig.file("systemctl.log"), None, "no unit stopped");
    assert!(
        stderr.contains(r#"a Spot hibernation resumes this boot: ["myapp.service"] not stopped"#),
        "{stderr}"
    );
    let record = rig.record();
    assert_eq!(record["drain"]["reason"], "spot");
    // Nothing stopped: the record lists none.
    assert!(record["drain"]["stopped"].is_null(), "{record}");
    assert!(record["drain"]["done"].is_string(), "{record}");
}

/// Five rebalance recommendations, a second apart, and no interruption: rebalance.d once
/// (with the first notice's time), rebalance-undo.d once, `rebalance_undo_after` after the
/// last; nothing drains.
#[tokio::test(flavor = "multi_thread")]
async fn five_rebalance_notices_run_the_soft_hook_once_and_the_undo_once() {
    let lifecycle = json!({"drain": {"rebalance_undo_after": "2s"}});
    let rig = Rig::new(lifecycle, group(60.0)).await;
    let log = rig.sb.path("rebalance.log");
    rig.hook(
        "rebalance.d/10-soft",
        &format!(
            "echo \"rebalance $BOOTSTAGE_REBALANCE_NOTICE_TIME $(date +%s%6N)\" >> {}",
            log.display()
        ),
    );
    rig.hook(
        "rebalance-undo.d/10-undo",
        &format!("echo \"undo $(date +%s%6N)\" >> {}", log.display()),
    );
    rig.hook(
        "drain.d/10-never",
        &format!("echo drain >> {}", log.display()),
    );
    let watcher = rig.watch();
    rig.looks(3).await;
    let times: Vec<String> = (0..5).map(|i| format!("2026-12-06T08:22:0{i}Z")).collect();
    for time in &times {
        rig.imds
            .set_meta_data(REBALANCE, Some(&json!({"noticeTime": time}).to_string()));
        // Each seen: the watcher looks twice before the next.
        rig.looks(2).await;
    }
    let last = rig.changed_at(REBALANCE);
    until("the undo", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("undo"))
    })
    .await;
    // Then 3 s more of looks (30 at 100 ms), the last notice still served: nothing more.
    rig.looks(30).await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("rebalance {} ", times[0])),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("undo "), "{lines:?}");
    let undone: u64 = lines[1].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        undone >= last + 2_000_000,
        "the undo came {} ms after the last notice",
        (undone as i64 - last as i64) / 1000
    );
    let record = rig.record();
    assert_eq!(record["rebalance"]["notices"], json!(times));
    assert_eq!(record["rebalance"]["hooks_ran"], 1);
    assert_eq!(record["rebalance"]["undone"], 1);
    assert!(record["drain"].is_null());
    let status = common::run(rig.command(&["status"])).await;
    assert!(
        status.stdout.contains(
            "lifecycle: rebalance: 5 recommendation(s) seen, rebalance.d ran 1 time(s), rebalance-undo.d 1 time(s)"
        ),
        "{}",
        status.stdout
    );
    let notices = rig.webhook.wait_for(2).await;
    let rebalances: Vec<_> = notices
        .iter()
        .filter(|n| n.body["event"] == "rebalance")
        .map(|n| n.body["rebalance"].clone())
        .collect();
    assert_eq!(rebalances.len(), 2, "{rebalances:?}");
    assert_eq!(rebalances[0]["notice_time"], times[0].as_str());
    assert_eq!(rebalances[1]["undo"], true);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let watched = exits(watcher).await;
    assert!(watched.status.success());
}

/// Scheduled maintenance: maintenance.d once per EventId, with the event in its
/// environment, as events appear; an event seen again runs nothing; a reboot drains nothing.
#[tokio::test(flavor = "multi_thread")]
async fn each_maintenance_event_runs_its_hooks_once_with_the_event() {
    let rig = Rig::new(json!({}), group(60.0)).await;
    let log = rig.sb.path("maintenance.log");
    rig.hook(
        "maintenance.d/10-note",
        &format!(
            "echo \"$BOOTSTAGE_MAINTENANCE_EVENT_ID $BOOTSTAGE_MAINTENANCE_CODE $BOOTSTAGE_MAINTENANCE_NOT_BEFORE\" >> {log}\nprintf '%s\\n' \"$BOOTSTAGE_MAINTENANCE_EVENT\" >> {log}.json",
            log = log.display()
        ),
    );
    let watcher = rig.watch();
    rig.looks(3).await;
    let event = |id: &str, code: &str| {
        json!({"Code": code, "Description": "scheduled", "EventId": id,
               "NotBefore": "21 Jan 2099 09:00:43 GMT", "NotAfter": "21 Jan 2099 09:17:23 GMT",
               "NotBeforeDeadline": "10 Feb 2099 09:00:43 GMT", "State": "active"})
    };
    let one = event("instance-event-0d59937288b749b32", "system-reboot");
    let two = event("instance-event-0123456789abcdef0", "system-maintenance");
    rig.imds
        .set_meta_data(MAINTENANCE, Some(&json!([one, two]).to_string()));
    until("two events' hooks", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 2)
    })
    .await;
    let three = event("instance-event-0fedcba9876543210", "instance-reboot");
    rig.imds
        .set_meta_data(MAINTENANCE, Some(&json!([one, two, three]).to_string()));
    until("the third event's hook", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 3)
    })
    .await;
    rig.looks(20).await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "instance-event-0d59937288b749b32 system-reboot 21 Jan 2099 09:00:43 GMT",
            "instance-event-0123456789abcdef0 system-maintenance 21 Jan 2099 09:00:43 GMT",
            "instance-event-0fedcba9876543210 instance-reboot 21 Jan 2099 09:00:43 GMT",
        ]
    );
    let events: Vec<Value> = std::fs::read_to_string(format!("{}.json", log.display()))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events, [one.clone(), two, three]);
    assert_eq!(rig.record()["maintenance"].as_array().unwrap().len(), 3);
    assert!(rig.record()["drain"].is_null());
    let notices = rig.webhook.wait_for(3).await;
    let maintenance: Vec<_> = notices
        .iter()
        .filter(|n| n.body["event"] == "maintenance")
        .collect();
    let mut ids: Vec<&str> = maintenance
        .iter()
        .map(|n| n.body["maintenance"]["EventId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "instance-event-0123456789abcdef0",
            "instance-event-0d59937288b749b32",
            "instance-event-0fedcba9876543210"
        ]
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(exits(watcher).await.status.success());
}

/// A drain hook that fails, after longer than the termination hook's heartbeat timeout:
/// the watcher heartbeats the termination action meanwhile (else the group would end it
/// by its timeout), then still completes it (one CONTINUE, after the hook's end), and the
/// webhook hears the drain and then its failure (`"stage": "drain"`).
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_drain_still_completes_the_action_and_sends_the_drain_failure_notice() {
    let lifecycle = json!({
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"within": "60s"}
    });
    // A 3 s heartbeat timeout: a heartbeat a second keeps the action waiting.
    let rig = Rig::new(lifecycle, group(3.0)).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-fails",
        &format!("sleep 5\ndate +%s%6N > {}/hook-end\nexit 4", dir.display()),
    );
    let out = common::run(rig.command(&["lifecycle", "complete"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let watcher = rig.watch();
    rig.looks(3).await;
    // The group decides: IMDS says so, and the instance waits under the termination hook.
    rig.orch.terminate(INSTANCE).unwrap();
    rig.imds.set_meta_data(TARGET, Some("Terminated"));
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        stderr.contains("the drain failed: hook drain.d/10-fails exited with 4"),
        "{stderr}"
    );
    let hook_end = rig.stamp("hook-end");
    let calls = rig.orch.calls();
    let done = completions(&calls, "leave");
    assert_eq!(done.len(), 1, "{calls:?}");
    assert_eq!(done[0].params["LifecycleActionResult"], "CONTINUE");
    assert!(done[0].unix_usec > hook_end);
    let leaving = rig.orch.actions()[INSTANCE]
        .actions
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (
            leaving.kind.as_str(),
            leaving.by.as_deref(),
            leaving.refused
        ),
        ("termination", Some("complete"), 0),
        "completed by us, not ended by its timeout"
    );
    assert!(leaving.heartbeats >= 2, "{leaving:?}");
    let notices = rig.webhook.wait_for(2).await;
    let events: Vec<&str> = notices
        .iter()
        .map(|n| n.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["drain", "failure"]);
    let failure = &notices[1].body;
    assert_eq!(failure["stage"], "drain");
    assert_eq!(failure["drain"]["reason"], "scale-in");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("hook drain.d/10-fails exited with 4"),
        "{failure}"
    );
    assert_eq!(failure["instance"]["instance_id"], INSTANCE);
    assert_eq!(rig.record()["termination"]["delivered"], true);
}

/// A group with only a termination hook (the launch left to the group's own timing): the
/// boot sends nothing for the launch hook, the watcher goes straight to watching the
/// instance's life, and a scale-in drains it and completes the termination action once.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_only_a_termination_hook_is_drained_and_its_launch_left_alone() {
    let lifecycle = json!({"asg": {"group": "web", "termination_hook": "leave"}});
    let rig = Rig::new(lifecycle, group(60.0)).await;
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drains", rig.sb.path("").display()),
    );
    let out = common::run(rig.command(&["notify", "ready"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let _watcher = rig.watch();
    rig.looks(3).await;
    rig.orch.terminate(INSTANCE).unwrap();
    rig.imds.set_meta_data(TARGET, Some("Terminated"));
    until("one completion of the termination hook", || {
        completions(&rig.orch.calls(), "leave").len() == 1
    })
    .await;
    assert_eq!(rig.file("drains").as_deref(), Some("x\n"));
    let launch: Vec<_> = rig
        .orch
        .calls()
        .into_iter()
        .filter(|c| c.params.get("LifecycleHookName").map(String::as_str) == Some("launch"))
        .collect();
    assert!(launch.is_empty(), "{launch:?}");
}
