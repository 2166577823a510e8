//! Leaving gracefully on Azure: the real `bootstage lifecycle watch` after a
//! `metadata --provider azure`, against the IMDS emulator's Azure flavor on 127.0.0.1,
//! whose scheduled events a test adds while the watcher polls them
//! (`Emulator::add_scheduled_event`) and whose approvals (`StartRequests`) it reads back.
//! Units are stopped through the same `systemctl` double as `drain.rs`; a lifecycle
//! emulator stands ready as Auto Scaling to show that nothing of AWS's is asked there.
//! And on OpenStack, which has no interruption events, the watcher asks nothing at all.
//!
//! Waits are for the emulator's events (a poll asked or answered, an approval accepted),
//! each bounded by a limit for a loaded 2-core machine, not a claim of speed.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Sandbox;
use common::webhook::Webhook;
use imds_emulator::{AzureInstance, Config, Emulator, Flavor, ScheduledEvent};
use lifecycle_emulator::{Config as Orch, Emulator as Orchestrator, Group, Hook};
use serde_json::{Value, json};

const SKIPPED: &str = "on Azure: Auto Scaling hooks, the group, CloudFormation and the status tags are AWS's; none is asked";
const EVENTS: &str = "/metadata/scheduledevents";
/// The VM's name in the emulator's instance document (`compute.name`).
const VM: &str = "web-1";

struct Rig {
    sb: Sandbox,
    emu: Emulator,
    orch: Orchestrator,
    webhook: Webhook,
}

/// Waits for `what` (an emulator's event), at most 60 s (a limit, not a claim).
async fn within<T>(what: &str, wait: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("not within 60 s: {what}"))
}

async fn exits(child: tokio::process::Child) -> std::process::Output {
    within("the watcher's exit", child.wait_with_output())
        .await
        .unwrap()
}

fn sigterm(child: &tokio::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

fn rfc3339_unix(text: &str) -> u64 {
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whole seconds from now (NotBefore has no fraction).
fn in_secs(secs: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(now + secs)
}

impl Rig {
    /// An Azure VM (`web-1`) whose metadata stage ran with `bootstage.lifecycle` =
    /// `lifecycle` and the notices going to the webhook; a group `web` with launch and
    /// termination hooks stands ready in the lifecycle emulator.
    async fn new(lifecycle: Value, azure: AzureInstance) -> Rig {
        let webhook = Webhook::start(&[]).await;
        let params = json!({"bootstage": {"lifecycle": lifecycle, "notify": {"url": webhook.url}}});
        let emu = Emulator::start(Config {
            flavor: Flavor::Azure,
            user_data: Some(params.to_string().into_bytes()),
            azure,
            ..Config::default()
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(Orch {
            groups: vec![Group {
                name: "web".into(),
                hook: "launch".into(),
                heartbeat_timeout: 60.0,
                instances: vec![AzureInstance::default().vm_id],
                termination_hook: Some(Hook {
                    name: "leave".into(),
                    heartbeat_timeout: 60.0,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&emu.url(), &["--provider", "azure"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let instance: Value = serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], "azure");
        assert_eq!(instance["instance_name"], VM);
        Rig {
            sb,
            emu,
            orch,
            webhook,
        }
    }

    /// The watcher, pointed at the emulator, stopping units through the double.
    fn watch(&self) -> tokio::process::Child {
        let url = self.emu.url();
        let systemctl = self.systemctl();
        watch_command(&self.sb, &self.orch, &url, &systemctl)
            .spawn()
            .unwrap()
    }

    /// Until the watcher has been answered `more` polls after those answered so far.
    async fn polls(&self, more: u64) {
        let n = self.emu.scheduled_events_count() + more;
        within(
            &format!("{more} more polls answered"),
            self.emu.scheduled_events_served(n),
        )
        .await;
    }

    fn hook(&self, rel: &str, script: &str) {
        hook(&self.sb, rel, script)
    }

    fn systemctl(&self) -> PathBuf {
        let path = self.sb.path("systemctl");
        if !path.exists() {
            let log = self.sb.path("systemctl.log");
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\n[ \"$1\" = stop ] || exit 2\necho \"$*\" >> {}\n",
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

    fn record(&self) -> Value {
        serde_json::from_str(&self.sb.read("lifecycle/record.json").unwrap_or_default())
            .unwrap_or(Value::Null)
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

    /// The bodies of the approvals the emulator received.
    fn start_requests(&self) -> Vec<String> {
        self.emu
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == EVENTS)
            .map(|r| {
                assert!(r.had_metadata, "{r:?}");
                assert_eq!(r.query.as_deref(), Some("api-version=2020-07-01"));
                r.body.unwrap_or_default()
            })
            .collect()
    }

    /// Every request reached Azure's paths with `Metadata: true`, none EC2's, and Auto
    /// Scaling heard nothing.
    fn nothing_of_aws(&self) {
        let requests = self.emu.requests();
        assert!(
            requests
                .iter()
                .all(|r| r.had_metadata && r.path.starts_with("/metadata/")),
            "{requests:?}"
        );
        assert_eq!(self.orch.calls().len(), 0, "{:?}", self.orch.calls());
    }
}

/// `bootstage lifecycle watch` with Auto Scaling and CloudFormation at the lifecycle
/// emulator, IMDS at `url`.
fn watch_command(
    sb: &Sandbox,
    orch: &Orchestrator,
    url: &str,
    systemctl: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = sb.command(&[
        "lifecycle",
        "watch",
        "--imds-endpoint",
        url,
        "--systemctl",
        systemctl.to_str().unwrap(),
    ]);
    cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", orch.url())
        .env("AWS_ENDPOINT_URL_CLOUDFORMATION", orch.url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// A root-owned executable hook in the sandbox's hook dir (`drain.d/10-x`).
fn hook(sb: &Sandbox, rel: &str, script: &str) {
    let path = sb.path("hooks").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A Spot VM evicted: a `Preempt` naming this VM drains it once, reason `preempted`, its
/// deadline `NotBefore` less the margin; the event is approved only after the drain
/// (drain.d holds until the test lets it go, and nothing is approved meanwhile), with the
/// body Microsoft documents. With launch and termination hooks configured, nothing of
/// Auto Scaling is asked (said once); a restarted watcher, the event still listed (a
/// shared host waiting for the other tenants), neither drains nor approves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_preempt_for_this_vm_drains_once_and_is_approved_after_the_drain() {
    let lifecycle = json!({
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"stop": ["myapp.service", "worker@1.service"]}
    });
    let keep = AzureInstance {
        keep_approved_events: true,
        ..AzureInstance::default()
    };
    let rig = Rig::new(lifecycle, keep).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-drain",
        &format!(
            "env -0 > {d}/hook-env\necho x >> {d}/drains\ntouch {d}/draining\nwhile [ ! -e {d}/release ]; do sleep 0.05; done",
            d = dir.display()
        ),
    );
    let ready = common::run(rig.sb.command(&["notify", "ready"])).await;
    assert_eq!(ready.code, 0, "{}", ready.stderr);
    assert!(
        ready
            .stderr
            .contains("on Azure: no auto scaling group or CloudFormation stack to tell"),
        "{}",
        ready.stderr
    );
    let watcher = rig.watch();
    rig.polls(1).await;
    let at = in_secs(120);
    rig.emu
        .add_scheduled_event(ScheduledEvent::new("p1", "Preempt", &[VM], at));
    // drain.d's own mark: the only event there is to wait for (a file, looked at).
    within("drain.d began", async {
        while rig.file("draining").is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        rig.emu.scheduled_event_approvals(),
        Vec::<String>::new(),
        "nothing approved while drain.d runs"
    );
    std::fs::write(rig.sb.path("release"), "").unwrap();
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");

    assert_eq!(rig.emu.scheduled_event_approvals(), ["p1"], "{stderr}");
    assert_eq!(
        rig.start_requests(),
        [r#"{"StartRequests":[{"EventId":"p1"}]}"#]
    );
    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "preempted");
    assert_eq!(env["BOOTSTAGE_MAINTENANCE_EVENT_ID"], "p1");
    assert_eq!(env["BOOTSTAGE_MAINTENANCE_CODE"], "Preempt");
    let not_before = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        rfc3339_unix(&env["BOOTSTAGE_DRAIN_DEADLINE"]),
        not_before - 10,
        "NotBefore less the 10 s margin"
    );
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    assert_eq!(
        rig.file("systemctl.log").unwrap(),
        "stop -- myapp.service\nstop -- worker@1.service\n"
    );
    let record = rig.record();
    assert_eq!(record["drain"]["reason"], "preempted");
    assert_eq!(record["drain"]["approve"], "p1");
    assert_eq!(record["approved"], json!(["p1"]));
    assert!(record["drain"]["error"].is_null(), "{record}");
    assert!(record["termination"].is_null(), "{record}");
    let notices = rig.webhook.wait_for(1).await;
    let drains: Vec<_> = notices
        .iter()
        .filter(|n| n.body["event"] == "drain")
        .collect();
    assert_eq!(drains.len(), 1);
    assert_eq!(drains[0].body["drain"]["reason"], "preempted");
    assert_eq!(stderr.matches(SKIPPED).count(), 1, "{stderr}");

    let again = exits(rig.watch()).await;
    assert!(again.status.success());
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    assert_eq!(rig.emu.scheduled_event_approvals(), ["p1"]);
    rig.nothing_of_aws();
}

/// Scheduled events go to every VM of an availability set or a scale set's placement
/// group: a `Preempt` and a `Reboot` naming only other VMs are none of this one's
/// business (nothing drains, no hook runs, nothing is approved) while the watcher polls
/// on; SIGTERM then ends the watch cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn events_for_other_vms_are_ignored() {
    let rig = Rig::new(json!({"drain": {}}), AzureInstance::default()).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drains", dir.display()),
    );
    rig.hook(
        "maintenance.d/10-note",
        &format!("echo x >> {}/maintenance", dir.display()),
    );
    let watcher = rig.watch();
    rig.polls(1).await;
    rig.emu.add_scheduled_event(ScheduledEvent::new(
        "p9",
        "Preempt",
        &["web-2"],
        in_secs(60),
    ));
    rig.emu.add_scheduled_event(ScheduledEvent::new(
        "r9",
        "Reboot",
        &["web-10", "web-"],
        in_secs(900),
    ));
    rig.polls(3).await;
    sigterm(&watcher);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(rig.file("drains").is_none(), "{stderr}");
    assert!(rig.file("maintenance").is_none(), "{stderr}");
    assert_eq!(rig.emu.scheduled_event_approvals(), Vec::<String>::new());
    let record = rig.record();
    assert!(record["drain"].is_null(), "{record}");
    rig.nothing_of_aws();
}

/// A `Reboot` naming this VM runs maintenance.d once, with the event in its environment,
/// and is approved once the hook is over (it takes 2.5 s, past two looks a second apart;
/// its line is written at its end); the approved event leaves the list, and the polls
/// go on with nothing more done.
#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_runs_maintenance_hooks_once_then_is_approved() {
    let rig = Rig::new(json!({"drain": {}}), AzureInstance::default()).await;
    let log = rig.sb.path("maintenance.log");
    rig.hook(
        "maintenance.d/10-note",
        &format!(
            "sleep 2.5\necho \"$BOOTSTAGE_MAINTENANCE_EVENT_ID $BOOTSTAGE_MAINTENANCE_CODE $BOOTSTAGE_MAINTENANCE_STATE\" >> {}",
            log.display()
        ),
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let watcher = rig.watch();
    rig.polls(1).await;
    rig.emu
        .add_scheduled_event(ScheduledEvent::new("r1", "Reboot", &[VM], in_secs(900)));
    within("the approval", rig.emu.scheduled_events_approved(1)).await;
    assert_eq!(
        lines(),
        ["r1 Reboot Scheduled"],
        "the hook was over before the approval"
    );
    rig.polls(3).await;
    sigterm(&watcher);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert_eq!(lines(), ["r1 Reboot Scheduled"]);
    assert_eq!(rig.emu.scheduled_event_approvals(), ["r1"]);
    assert_eq!(
        rig.start_requests(),
        [r#"{"StartRequests":[{"EventId":"r1"}]}"#]
    );
    let record = rig.record();
    assert_eq!(record["maintenance"], json!(["r1"]));
    assert_eq!(record["approved"], json!(["r1"]));
    let status = rig.sb.run(&["status"]).await;
    assert!(
        status
            .stdout
            .contains("lifecycle: scheduled events approved: r1"),
        "{}",
        status.stdout
    );
    let notices = rig.webhook.wait_for(1).await;
    assert_eq!(notices[0].body["event"], "maintenance");
    assert_eq!(notices[0].body["maintenance"]["EventId"], "r1");
    rig.nothing_of_aws();
}

/// A watcher restarted while the approved `Reboot` is still listed (a shared host waiting
/// for the other tenants' approvals) neither runs maintenance.d again nor approves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_watcher_approves_nothing_twice() {
    let keep = AzureInstance {
        keep_approved_events: true,
        ..AzureInstance::default()
    };
    let rig = Rig::new(json!({"drain": {}}), keep).await;
    let log = rig.sb.path("maintenance.log");
    rig.hook(
        "maintenance.d/10-note",
        &format!(
            "echo \"$BOOTSTAGE_MAINTENANCE_EVENT_ID\" >> {}",
            log.display()
        ),
    );
    rig.emu
        .add_scheduled_event(ScheduledEvent::new("r2", "Reboot", &[VM], in_secs(900)));
    let first = rig.watch();
    within("the approval", rig.emu.scheduled_events_approved(1)).await;
    sigterm(&first);
    assert!(exits(first).await.status.success());
    let second = rig.watch();
    rig.polls(4).await;
    sigterm(&second);
    let watched = exits(second).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert_eq!(rig.emu.scheduled_event_approvals(), ["r2"], "{stderr}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "r2\n");
    rig.nothing_of_aws();
}

/// The first request enables Azure's service and may take up to two minutes: the
/// watcher waits for it, and SIGTERM during that wait ends the watch at once, cleanly,
/// nothing acted on.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_first_call_ends_the_watch() {
    let slow = AzureInstance {
        scheduled_events_first_delay_secs: 3600,
        ..AzureInstance::default()
    };
    let rig = Rig::new(json!({"drain": {}}), slow).await;
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drains", rig.sb.path("").display()),
    );
    let watcher = rig.watch();
    within("the first poll", rig.emu.scheduled_events_asked(1)).await;
    let asked = std::time::Instant::now();
    sigterm(&watcher);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        stderr.contains("stopping the watch of the instance's life"),
        "{stderr}"
    );
    assert_eq!(rig.emu.scheduled_events_count(), 0);
    assert!(rig.file("drains").is_none());
    assert!(rig.record()["drain"].is_null());
    rig.nothing_of_aws();
}

/// The first request is waited for past the later requests' 5 s bound (it enables the
/// service, up to two minutes): answered after 6 s, it was the only one asked, and the
/// event it carried is acted on.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_call_is_waited_for_longer_than_the_others() {
    let slow = AzureInstance {
        scheduled_events_first_delay_secs: 6,
        ..AzureInstance::default()
    };
    let rig = Rig::new(json!({"drain": {}}), slow).await;
    let log = rig.sb.path("maintenance.log");
    rig.hook(
        "maintenance.d/10-note",
        &format!(
            "echo \"$BOOTSTAGE_MAINTENANCE_EVENT_ID\" >> {}",
            log.display()
        ),
    );
    rig.emu
        .add_scheduled_event(ScheduledEvent::new("r3", "Redeploy", &[VM], in_secs(600)));
    let watcher = rig.watch();
    within("the first answer", rig.emu.scheduled_events_served(1)).await;
    assert_eq!(
        rig.emu.scheduled_events_asked_count(),
        1,
        "the first request was not given up and asked again"
    );
    within("the approval", rig.emu.scheduled_events_approved(1)).await;
    sigterm(&watcher);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        !stderr.contains("cannot read Azure's scheduled events"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "r3\n");
    assert_eq!(rig.emu.scheduled_event_approvals(), ["r3"]);
    rig.nothing_of_aws();
}

/// OpenStack has no interruption events: with drain settings and a drain.d hook, the
/// watcher says there is nothing to watch and exits 0, having asked nothing of the
/// metadata service (neither Nova's paths nor EC2's in their stead) nor of Auto Scaling.
#[tokio::test(flavor = "multi_thread")]
async fn on_openstack_the_watcher_asks_nothing_and_exits() {
    let params = json!({"bootstage": {"lifecycle": {
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"stop": ["myapp.service"]}}}});
    let emu = Emulator::start(Config {
        flavor: Flavor::OpenStack,
        user_data: Some(params.to_string().into_bytes()),
        ..Config::default()
    })
    .await
    .unwrap();
    let orch = Orchestrator::start(Orch::default()).await.unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &["--provider", "openstack"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    hook(&sb, "drain.d/10-drain", "true");
    let before = emu.requests().len();
    let systemctl = sb.path("systemctl");
    let watched = exits(
        watch_command(&sb, &orch, &emu.url(), &systemctl)
            .spawn()
            .unwrap(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        stderr.contains("on OpenStack: Nova's metadata has no interruption or maintenance events"),
        "{stderr}"
    );
    let after = emu.requests();
    assert_eq!(after.len(), before, "{:?}", &after[before..]);
    assert_eq!(orch.calls().len(), 0, "{:?}", orch.calls());
}
