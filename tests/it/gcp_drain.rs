//! Leaving gracefully on Compute Engine: the real `bootstage lifecycle watch` after a
//! `metadata --provider gcp`, against the IMDS emulator's GCP flavor on 127.0.0.1, whose
//! `instance/preempted` and `instance/maintenance-event` a test changes while the watcher
//! long-polls them (`Emulator::set_gcp`; the emulator holds a `wait_for_change` request
//! until the value changes). Units are stopped through the same `systemctl` double as
//! `drain.rs`; a lifecycle emulator stands ready as Auto Scaling to show that nothing of
//! AWS's is asked on GCP.
//!
//! The watcher looks at its ticker only once an hour here (`--poll-every 1h`): whatever it
//! does within a test's limit, a long poll's answer woke it. Waits are for events, each
//! bounded by a limit for a loaded 2-core machine, not a claim of speed.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use common::webhook::Webhook;
use common::{Sandbox, b64};
use imds_emulator::{Config, Emulator, Flavor};
use lifecycle_emulator::{Config as Orch, Emulator as Orchestrator, Group, Hook};
use serde_json::{Value, json};

const PREEMPTED: &str = "instance/preempted";
const MAINTENANCE: &str = "instance/maintenance-event";
const GCP_PREFIX: &str = "/computeMetadata/v1/";
const SKIPPED: &str = "on Compute Engine: Auto Scaling hooks, the group, CloudFormation and the status tags are AWS's; none is asked";

struct Rig {
    sb: Sandbox,
    emu: Emulator,
    orch: Orchestrator,
    webhook: Webhook,
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

impl Rig {
    /// A GCP instance whose metadata stage ran with `bootstage.lifecycle` = `lifecycle`
    /// and the notices going to the webhook; a group `web` with launch and termination
    /// hooks stands ready in the lifecycle emulator.
    async fn new(lifecycle: Value) -> Rig {
        let webhook = Webhook::start(&[]).await;
        let params = json!({"bootstage": {"lifecycle": lifecycle, "notify": {"url": webhook.url}}});
        let emu = Emulator::start(Config {
            flavor: Flavor::Gcp,
            user_data: Some(b64(&params.to_string()).into()),
            ..Config::default()
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(Orch {
            groups: vec![Group {
                name: "web".into(),
                hook: "launch".into(),
                heartbeat_timeout: 60.0,
                instances: vec!["4520031799277581759".into()],
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
        let out = sb.metadata(&emu.url(), &["--provider", "gcp"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let instance: Value = serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], "gcp");
        Rig {
            sb,
            emu,
            orch,
            webhook,
        }
    }

    /// The watcher, pointed at the emulator, its ticker at `poll_every`, stopping units
    /// through the double.
    fn watch(&self, poll_every: &str) -> tokio::process::Child {
        let url = self.emu.url();
        let systemctl = self.systemctl();
        self.command(&[
            "lifecycle",
            "watch",
            "--imds-endpoint",
            &url,
            "--poll-every",
            poll_every,
            "--systemctl",
            systemctl.to_str().unwrap(),
        ])
        .spawn()
        .unwrap()
    }

    /// A bootstage command with Auto Scaling and CloudFormation at the lifecycle emulator.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.sb.command(args);
        cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", self.orch.url())
            .env("AWS_ENDPOINT_URL_CLOUDFORMATION", self.orch.url())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    /// Until the watcher holds a long poll of each key.
    async fn long_polling(&self) {
        until("a long poll of each key held", || {
            self.emu.gcp_waiting() >= 2
        })
        .await;
    }

    /// A root-owned executable hook in the sandbox's hook dir (`drain.d/10-x`).
    fn hook(&self, rel: &str, script: &str) {
        let path = self.sb.path("hooks").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    /// A `systemctl` double: `stop -- UNIT` appends its arguments to `systemctl.log`.
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

    /// The wall clock of the last change of `key`, in seconds.
    fn changed_at(&self, key: &str) -> u64 {
        let change = self
            .emu
            .changes()
            .into_iter()
            .rev()
            .find(|c| c.path == key)
            .expect("the change is logged");
        change.unix as u64
    }

    /// GETs of one key the emulator answered so far.
    fn answered(&self, key: &str) -> usize {
        let path = format!("{GCP_PREFIX}{key}");
        self.emu
            .requests()
            .iter()
            .filter(|r| r.path == path && r.status.is_some())
            .count()
    }

    /// Every request reached GCP's paths with `Metadata-Flavor: Google`, none EC2's, and
    /// Auto Scaling heard nothing.
    fn nothing_of_aws(&self) {
        let requests = self.emu.requests();
        assert!(
            requests
                .iter()
                .all(|r| r.had_flavor && r.path.starts_with(GCP_PREFIX)),
            "{requests:?}"
        );
        assert_eq!(self.orch.calls().len(), 0, "{:?}", self.orch.calls());
    }
}

/// A Spot VM preempted: `instance/preempted` turns TRUE while the watcher long-polls it;
/// drain.d runs once with the reason `preempted` and a deadline 30 s (the notice) less the
/// margin after the change, then the units are stopped in order; the record, `status` and
/// the notice say so. With launch and termination hooks configured, nothing of Auto
/// Scaling is asked, neither by the ready notice nor by the watcher (said once in its
/// log), and a restarted watcher drains nothing again.
#[tokio::test(flavor = "multi_thread")]
async fn a_preempted_vm_drains_once_and_asks_nothing_of_aws() {
    let lifecycle = json!({
        "asg": {"hook": "launch", "group": "web", "termination_hook": "leave"},
        "drain": {"stop": ["myapp.service", "worker@1.service"], "within": "60s"}
    });
    let rig = Rig::new(lifecycle).await;
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-drain",
        &format!(
            "env -0 > {d}/hook-env\necho x >> {d}/drains",
            d = dir.display()
        ),
    );
    let ready = common::run(rig.command(&["notify", "ready"])).await;
    assert_eq!(ready.code, 0, "{}", ready.stderr);
    assert!(
        ready
            .stderr
            .contains("on Compute Engine: no auto scaling group or CloudFormation stack to tell"),
        "{}",
        ready.stderr
    );
    assert!(
        !ready.stderr.contains("never started"),
        "no launch hook is missing a watcher on GCP: {}",
        ready.stderr
    );
    let watcher = rig.watch("1h");
    rig.long_polling().await;
    rig.emu.set_gcp(PREEMPTED, "TRUE");
    let changed = rig.changed_at(PREEMPTED);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");

    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "preempted", "{stderr}");
    let deadline = rfc3339_unix(&env["BOOTSTAGE_DRAIN_DEADLINE"]);
    let from_change = deadline as i64 - changed as i64;
    assert!(
        (19..=22).contains(&from_change),
        "30 s of notice less the 10 s margin after the change: {from_change} s"
    );
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    assert_eq!(
        rig.file("systemctl.log").unwrap(),
        "stop -- myapp.service\nstop -- worker@1.service\n"
    );
    let record = rig.record();
    assert_eq!(record["drain"]["reason"], "preempted");
    assert_eq!(record["drain"]["why"], "instance/preempted TRUE");
    assert_eq!(
        record["drain"]["stopped"],
        json!(["myapp.service", "worker@1.service"])
    );
    assert!(record["drain"]["error"].is_null(), "{record}");
    assert!(record["termination"].is_null(), "{record}");
    let status = rig.sb.run(&["status"]).await;
    assert!(
        status
            .stdout
            .contains("lifecycle: drained (preempted: instance/preempted TRUE)"),
        "{}",
        status.stdout
    );
    let notices = rig.webhook.wait_for(1).await;
    let drains: Vec<_> = notices
        .iter()
        .filter(|n| n.body["event"] == "drain")
        .collect();
    assert_eq!(drains.len(), 1);
    assert_eq!(drains[0].body["drain"]["reason"], "preempted");
    assert_eq!(stderr.matches(SKIPPED).count(), 1, "{stderr}");

    let again = exits(rig.watch("1h")).await;
    assert!(again.status.success());
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    rig.nothing_of_aws();
}

/// Live migrations: `MIGRATE_ON_HOST_MAINTENANCE` runs maintenance.d once, with the event
/// in its environment, however long it stands (the hook takes 0.5 s while the watcher
/// looks every 100 ms); back to NONE and a second migration runs it once more; then
/// `TERMINATE_ON_HOST_MAINTENANCE` drains, reason `maintenance`, 60 s of notice less the
/// margin, and no more maintenance.d.
#[tokio::test(flavor = "multi_thread")]
async fn each_migration_runs_maintenance_hooks_once_and_a_host_termination_drains() {
    let rig = Rig::new(json!({"drain": {"stop": ["myapp.service"]}})).await;
    let dir = rig.sb.path("");
    let log = rig.sb.path("maintenance.log");
    rig.hook(
        "maintenance.d/10-note",
        &format!(
            "sleep 0.5\necho \"$BOOTSTAGE_MAINTENANCE_EVENT_ID $BOOTSTAGE_MAINTENANCE_CODE\" >> {}",
            log.display()
        ),
    );
    rig.hook(
        "drain.d/10-drain",
        &format!(
            "env -0 > {d}/hook-env\necho x >> {d}/drains",
            d = dir.display()
        ),
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let watcher = rig.watch("100ms");
    rig.long_polling().await;
    rig.emu.set_gcp(MAINTENANCE, "MIGRATE_ON_HOST_MAINTENANCE");
    until("the first migration's hook", || !lines().is_empty()).await;
    let before = rig.answered(MAINTENANCE);
    rig.emu.set_gcp(MAINTENANCE, "NONE");
    until("NONE answered and the next long poll held", || {
        rig.answered(MAINTENANCE) > before && rig.emu.gcp_waiting() >= 2
    })
    .await;
    assert_eq!(lines().len(), 1, "once while it stood: {:?}", lines());
    rig.emu.set_gcp(MAINTENANCE, "MIGRATE_ON_HOST_MAINTENANCE");
    until("the second migration's hook", || lines().len() >= 2).await;
    rig.emu
        .set_gcp(MAINTENANCE, "TERMINATE_ON_HOST_MAINTENANCE");
    let terminated = rig.changed_at(MAINTENANCE);
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");

    let lines = lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_ne!(lines[0], lines[1], "two events, two ids");
    for line in &lines {
        let (id, code) = line.split_once(' ').unwrap();
        assert!(id.starts_with("gcp:MIGRATE_ON_HOST_MAINTENANCE:"), "{line}");
        assert_eq!(code, "MIGRATE_ON_HOST_MAINTENANCE");
    }
    let record = rig.record();
    let ids: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(record["maintenance"], json!(ids));
    assert_eq!(record["drain"]["reason"], "maintenance");
    assert_eq!(
        record["drain"]["why"],
        "instance/maintenance-event TERMINATE_ON_HOST_MAINTENANCE"
    );
    let env = rig.env("hook-env");
    assert_eq!(env["BOOTSTAGE_DRAIN_REASON"], "maintenance");
    assert_eq!(
        env["BOOTSTAGE_MAINTENANCE_CODE"],
        "TERMINATE_ON_HOST_MAINTENANCE"
    );
    let from_change = rfc3339_unix(&env["BOOTSTAGE_DRAIN_DEADLINE"]) as i64 - terminated as i64;
    assert!(
        (49..=52).contains(&from_change),
        "60 s of notice less the 10 s margin: {from_change} s"
    );
    assert_eq!(rig.file("drains").unwrap(), "x\n");
    assert_eq!(
        rig.file("systemctl.log").unwrap(),
        "stop -- myapp.service\n"
    );
    let notices = rig.webhook.wait_for(3).await;
    let events: Vec<&str> = notices
        .iter()
        .map(|n| n.body["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events.iter().filter(|e| **e == "maintenance").count(),
        2,
        "{events:?}"
    );
    rig.nothing_of_aws();
}

/// The long poll wakes the watcher on the change: its ticker would look again only in an
/// hour, yet the preemption drains it. The emulator answered the key at most three times:
/// the first answer (`last_etag=0`), the held request that the change answered, and at
/// most one more begun before the drain ended the polls; not a poll per interval.
#[tokio::test(flavor = "multi_thread")]
async fn the_long_poll_wakes_the_watcher_on_the_change() {
    let rig = Rig::new(json!({"drain": {}})).await;
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drains", rig.sb.path("").display()),
    );
    let watcher = rig.watch("1h");
    rig.long_polling().await;
    assert_eq!(
        rig.answered(PREEMPTED),
        1,
        "one answer, then a held request"
    );
    rig.emu.set_gcp(PREEMPTED, "TRUE");
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert_eq!(rig.file("drains").as_deref(), Some("x\n"), "{stderr}");
    let answered = rig.answered(PREEMPTED);
    assert!((2..=3).contains(&answered), "{answered} answers");
}

/// A VM already being preempted when the watcher starts drains at the first answer: the
/// first poll names no ETag of a real answer (`last_etag=0`), so it is answered at once
/// rather than held until a change that will never come.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_preempted_before_the_watcher_starts_drains_at_the_first_answer() {
    let rig = Rig::new(json!({"drain": {}})).await;
    rig.hook(
        "drain.d/10-drain",
        &format!(
            "echo $BOOTSTAGE_DRAIN_REASON >> {}/drains",
            rig.sb.path("").display()
        ),
    );
    rig.emu.set_gcp(PREEMPTED, "TRUE");
    let watched = exits(rig.watch("1h")).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert_eq!(
        rig.file("drains").as_deref(),
        Some("preempted\n"),
        "{stderr}"
    );
}

/// Without instance.json (a metadata stage that did not finish), the watcher asks the
/// cloud the DMI names, as the metadata stage chooses without a flag: on a machine whose
/// DMI says Google, the preemption runs drain.d through GCP's keys, and nothing of EC2's
/// IMDS paths or of Auto Scaling is asked.
#[tokio::test(flavor = "multi_thread")]
async fn without_facts_the_dmi_names_the_cloud_to_watch() {
    let lifecycle = json!({"drain": {"within": "60s"}});
    let rig = Rig::new(lifecycle).await;
    std::fs::remove_file(rig.sb.state().join("instance.json")).unwrap();
    let dmi = rig.sb.path("dmi");
    std::fs::create_dir_all(&dmi).unwrap();
    std::fs::write(dmi.join("sys_vendor"), "Google\n").unwrap();
    std::fs::write(dmi.join("product_name"), "Google Compute Engine\n").unwrap();
    let dir = rig.sb.path("");
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drained", dir.display()),
    );
    let before = rig.emu.requests().len();
    let watcher = rig.watch("1h");
    rig.long_polling().await;
    rig.emu.set_gcp(PREEMPTED, "TRUE");
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert_eq!(rig.record()["drain"]["reason"], "preempted", "{stderr}");
    assert_eq!(rig.file("drained").unwrap(), "x\n");
    let requests: Vec<_> = rig.emu.requests().into_iter().skip(before).collect();
    assert!(
        requests
            .iter()
            .all(|r| r.had_flavor && r.path.starts_with(GCP_PREFIX)),
        "{requests:?}"
    );
    assert_eq!(rig.orch.calls().len(), 0, "{:?}", rig.orch.calls());
}

/// SIGTERM while both long polls are held: the watcher exits at once and cleanly,
/// nothing drained and nothing recorded as acted on.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_long_poll_ends_the_watch() {
    let rig = Rig::new(json!({"drain": {}})).await;
    rig.hook(
        "drain.d/10-drain",
        &format!("echo x >> {}/drains", rig.sb.path("").display()),
    );
    let watcher = rig.watch("1h");
    rig.long_polling().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let watched = exits(watcher).await;
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopping the watch of the instance's life"),
        "{stderr}"
    );
    assert!(rig.file("drains").is_none());
    let record = rig.record();
    assert!(record["drain"].is_null(), "{record}");
    assert!(
        record["maintenance"].as_array().is_none_or(Vec::is_empty),
        "{record}"
    );
    rig.nothing_of_aws();
}
