//! The drain under a real systemd as PID 1 (`boot.rs`'s machine: the Debian package in a
//! bookworm rootfs under systemd-nspawn, IMDS and the lifecycle emulator on the host's
//! loopback): the instance boots into service with an app that takes SIGTERM gracefully;
//! then the group removes it. Asserted from systemd's own records, the hooks' and the
//! app's timestamps and the emulator's calls (one wall clock: nspawn shares the host's).

use crate::boot::Machine;
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::webhook::Webhook;
use serde_json::json;

const INSTANCE: &str = "i-0d0d0d0d0d0d0d0d0";

/// The app: `bootstage launch`, then a shell that takes SIGTERM in a second and exits 0,
/// each step stamped (microseconds since the epoch) in /results.
const APP: &str = "[Unit]
Requires=bootstage.target
After=bootstage.target
[Service]
TimeoutStopSec=15
ExecStart=/usr/bin/bootstage launch -- /bin/sh -c 'trap \"date +%%s%%6N > /results/app-sigterm; sleep 1; date +%%s%%6N > /results/app-exit; exit 0\" TERM; date +%%s%%6N > /results/app-started; while :; do sleep 0.1; done'
[Install]
WantedBy=multi-user.target
";

/// Ends the boot once the lifecycle watcher has exited (it does once the instance has
/// drained and its termination action is complete), saving what the host asserts on.
const CHECK: &str = "[Unit]
After=bootstage-lifecycle.service
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'i=0; while [ ! -e /results/app-started ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 300 ] || echo app-started > /results/checker-timeout; i=0; while systemctl -q is-active bootstage-lifecycle.service && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 1200 ] || echo lifecycle > /results/checker-timeout; for u in bootstage-lifecycle.service test-app-drained.service; do systemctl show $u > /results/$u.show; done; journalctl -b --no-pager -o short-monotonic > /results/journal; bootstage status > /results/status.txt; systemctl --no-block exit 0'
";

/// The state switches to `Terminated` (and the group holds the instance in
/// `Terminating:Wait`): the drain hook runs with its reason and deadline; the app gets
/// SIGTERM only after it, and exits within its `TimeoutStopSec=`; then one CONTINUE for
/// the termination hook, after the hook's end and the app's exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_scale_in_drains_the_app_under_systemd() {
    let _ = crate::boot::rootfs_tar();
    let orch = Arc::new(
        lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
            groups: vec![lifecycle_emulator::Group {
                name: "web".into(),
                hook: "launch".into(),
                heartbeat_timeout: 900.0,
                instances: vec![INSTANCE.into()],
                termination_hook: Some(lifecycle_emulator::Hook {
                    name: "leave".into(),
                    heartbeat_timeout: 60.0,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let webhook = Webhook::start(&[]).await;
    // K0001: the machine's per-instance hook prints it.
    let params = json!({"K0001": "one", "bootstage": {"lifecycle": {
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"stop": ["test-app-drained.service"], "within": "90s"}
    }}});
    let imds = Arc::new(
        imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(common::b64(&params.to_string()).into()),
            target_lifecycle_state: Some("InService".into()),
            instance: imds_emulator::Instance {
                instance_id: INSTANCE.into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let env = format!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\nAWS_ACCESS_KEY_ID=test\nAWS_SECRET_ACCESS_KEY=test\nAWS_ENDPOINT_URL_AUTO_SCALING={orch}\nAWS_ENDPOINT_URL_CLOUDFORMATION={orch}\n",
        imds.url(),
        orch = orch.url()
    );
    let machine = Machine::new(&env, &webhook.url);
    machine.without_test_units();
    let wants = machine
        .root()
        .join("etc/systemd/system/multi-user.target.wants");
    machine.write("etc/systemd/system/test-app-drained.service", APP);
    std::os::unix::fs::symlink(
        "/etc/systemd/system/test-app-drained.service",
        wants.join("test-app-drained.service"),
    )
    .unwrap();
    machine.write("etc/systemd/system/test-check.service", CHECK);
    // The shipped unit, looking at IMDS every second instead of 5 (a drop-in, as an
    // operator would write one).
    machine.write(
        "etc/systemd/system/bootstage-lifecycle.service.d/poll.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/bootstage lifecycle watch --poll-every 1s\n",
    );
    machine.hook(
        "drain.d/10-drain",
        "date +%s%6N > /results/drain-start; env -0 > /results/drain-env; [ -e /results/app-sigterm ] && echo early > /results/app-stopped-before-hook; sleep 1; date +%s%6N > /results/drain-end",
    );
    let (during_imds, during_orch) = (imds.clone(), orch.clone());
    let (r, _machine) = tokio::task::spawn_blocking(move || {
        let r = machine.boot_with(|results| {
            // In service, the app running, the watcher past the launch and looking at
            // IMDS: then the group removes the instance.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let polled = || {
                during_imds
                    .requests()
                    .iter()
                    .filter(|r| r.path == "/latest/meta-data/spot/instance-action")
                    .count()
            };
            while !results.join("app-started").exists() || polled() < 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the app never started, or the watcher never looked at IMDS"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            during_orch.terminate(INSTANCE).unwrap();
            during_imds.set_meta_data("autoscaling/target-lifecycle-state", Some("Terminated"));
        });
        (r, machine)
    })
    .await
    .unwrap();
    let journal = r.text("journal");
    let stamp = |name: &str| -> u64 {
        let text = r.text(name);
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("/results/{name} {text:?}: {e}\n{journal}"))
    };

    // The hook: with its reason and deadline, before the app was touched.
    let env = r.env("drain-env");
    assert_eq!(
        env.get("BOOTSTAGE_DRAIN_REASON").map(String::as_str),
        Some("scale-in"),
        "{journal}"
    );
    let deadline = humantime::parse_rfc3339(&env["BOOTSTAGE_DRAIN_DEADLINE"]).unwrap();
    let changed = imds
        .changes()
        .into_iter()
        .find(|c| c.path == "autoscaling/target-lifecycle-state")
        .unwrap()
        .unix;
    let within = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - changed;
    assert!(
        (85.0..=95.0).contains(&within),
        "deadline {within} s after the change"
    );
    assert!(
        std::fs::metadata(r.dir.path().join("app-stopped-before-hook")).is_err(),
        "the app was stopped before the drain hook ran"
    );
    let (drain_start, drain_end) = (stamp("drain-start"), stamp("drain-end"));
    assert!(drain_start as f64 > changed * 1e6);

    // The app: SIGTERM after the hook, then its own graceful exit, well within its 15 s.
    let (sigterm, exited) = (stamp("app-sigterm"), stamp("app-exit"));
    assert!(sigterm > drain_end, "SIGTERM before the hook's end");
    assert!(exited - sigterm < 15_000_000, "{} µs", exited - sigterm);
    let app = r.unit("test-app-drained.service");
    assert_eq!(app.get("ActiveState").map(String::as_str), Some("inactive"));
    assert_eq!(
        app.get("Result").map(String::as_str),
        Some("success"),
        "{journal}"
    );
    assert_eq!(app.get("ExecMainStatus").map(String::as_str), Some("0"));

    // One CONTINUE for the termination hook, after the hook's end and the app's exit.
    let calls = orch.calls();
    let done: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.action == "CompleteLifecycleAction"
                && c.params.get("LifecycleHookName").map(String::as_str) == Some("leave")
        })
        .collect();
    assert_eq!(done.len(), 1, "{calls:?}\n{journal}");
    assert_eq!(done[0].params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(done[0].status, 200);
    assert!(done[0].unix_usec > drain_end && done[0].unix_usec > exited);
    let leaving = orch.actions()[INSTANCE].actions.last().cloned().unwrap();
    assert_eq!(
        (
            leaving.kind.as_str(),
            leaving.by.as_deref(),
            leaving.refused
        ),
        ("termination", Some("complete"), 0)
    );

    // The watcher ended on its own, after the completion; unsandboxed, as it must be to
    // run root hooks and stop units.
    let watcher = r.unit("bootstage-lifecycle.service");
    assert_eq!(watcher.get("Result").map(String::as_str), Some("success"));
    assert_eq!(
        watcher.get("ActiveState").map(String::as_str),
        Some("inactive")
    );
    assert_eq!(watcher.get("ProtectSystem").map(String::as_str), Some("no"));
    let status = r.text("status.txt");
    assert!(
        status.contains("lifecycle: drained (scale-in: target lifecycle state Terminated)"),
        "{status}"
    );
    let notices = webhook
        .wait_for_else(2, || crate::boot::notice_lines(&r.text("journal")))
        .await;
    assert!(
        notices.iter().any(|n| n.body["event"] == "drain"
            && n.body["drain"]["reason"] == "scale-in"
            && n.body["instance"]["instance_id"] == INSTANCE),
        "{:?}",
        notices.iter().map(|n| &n.body["event"]).collect::<Vec<_>>()
    );
}
