//! Warm pools: the real binary against the IMDS emulator (its target lifecycle state
//! switched on loopback), the lifecycle emulator's warm pool (two launch actions per
//! instance, each taking one completion) and moto (SSM, S3). The app waits while the
//! instance is `Warmed:*`; going into service reads the parameters again, syncs again
//! (nothing downloaded when nothing changed), runs per-start.d and completes the second
//! launch action; a reboot past an action sends it no second CONTINUE.

use crate::common;

use std::time::Duration;

use common::moto::moto;
use common::{Sandbox, b64};
use lifecycle_emulator::{Config as Orch, Emulator as Orchestrator, Group};
use serde_json::{Value, json};

const INSTANCE: &str = "i-0123456789abcdef0";
const STATE: &str = "autoscaling/target-lifecycle-state";

fn warm_group(pool: &str) -> Orch {
    Orch {
        groups: vec![Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 600.0,
            default_result: "ABANDON".into(),
            instances: vec![INSTANCE.into()],
            warm_pool: Some(pool.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

struct Rig {
    sb: Sandbox,
    imds: imds_emulator::Emulator,
    orch: Orchestrator,
}

impl Rig {
    async fn new(sb: Sandbox, params: Value, target: &str, orch: Orch) -> Rig {
        let imds = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(b64(&params.to_string()).into()),
            target_lifecycle_state: Some(target.into()),
            instance: imds_emulator::Instance {
                region: "us-east-1".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(orch).await.unwrap();
        Rig { sb, imds, orch }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.sb.command(args);
        // bootstage reads IMDS here (the emulator); the SDK has its credentials and
        // region from the environment and never asks it.
        cmd.envs(moto().env())
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", self.orch.url())
            .env("AWS_ENDPOINT_URL_CLOUDFORMATION", self.orch.url())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.url())
            .env("BOOTSTAGE_WARM_POLL", "100ms");
        cmd
    }

    async fn run(&self, args: &[&str]) -> common::Outcome {
        common::run(self.command(args)).await
    }

    /// The boot's chain as its units run it, up to the ready notice.
    async fn boot(&self) {
        for stage in [
            &["metadata"][..],
            &["s3-sync"],
            &["hooks"],
            &["notify", "ready"],
        ] {
            let out = self.run(stage).await;
            assert_eq!(out.code, 0, "{stage:?}: {}", out.stderr);
        }
    }

    fn hook(&self, rel: &str, script: &str) {
        let path = self.sb.path("hooks").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn actions(&self) -> Vec<String> {
        common::actions(&self.orch, INSTANCE)
    }

    fn completions(&self) -> usize {
        self.orch
            .calls()
            .iter()
            .filter(|c| c.action == "CompleteLifecycleAction")
            .count()
    }

    /// Waits (a limit, not a claim) until `in-service.json` says `state`.
    async fn in_service_says(&self, state: &str) -> Value {
        for _ in 0..600 {
            if let Some(text) = self.sb.read("in-service.json")
                && let Ok(record) = serde_json::from_str::<Value>(&text)
                && record["state"] == state
            {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "in-service.json never said {state}: {:?}",
            self.sb.read("in-service.json")
        );
    }
}

async fn put_param(name: &str, value: &str) {
    moto()
        .ssm()
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_instance_starts_its_app_only_in_service_with_fresh_secrets_and_no_download() {
    put_param("/warm1/db-password", "before-rotation").await;
    let bucket = moto().bucket("warm1-code").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    let sb = Sandbox::new();
    let config = sb.path("config");
    let params = json!({
        "db": {"password": {"ssm": "/warm1/db-password"}},
        "bootstage": {
            "sync": [{"from": "s3://warm1-code/app/", "to": config}],
            "lifecycle": {"asg": {"hook": "launch", "group": "web"}},
        },
    });
    let rig = Rig::new(sb, params, "Warmed:Running", warm_group("Warmed:Running")).await;
    rig.hook(
        "per-start.d/10-start",
        &format!(
            "echo \"start $BOOTSTAGE_START\" >> {}",
            rig.sb.path("hooks.log").display()
        ),
    );
    rig.boot().await;
    // The warm action is complete; the instance settles in the pool.
    assert_eq!(rig.actions(), ["launch-warm CONTINUE complete refused=0"]);
    assert_eq!(rig.orch.actions()[INSTANCE].state, "Warmed:Running");

    let seen = rig.sb.path("app-saw");
    let mut launch = rig
        .command(&[
            "launch",
            "--",
            "/bin/sh",
            "-c",
            &format!("printenv DB_PASSWORD > {}", seen.display()),
        ])
        .spawn()
        .unwrap();
    let waiting = rig.in_service_says("waiting").await;
    assert_eq!(waiting["warm"], "Warmed:Running", "{waiting}");
    // Polling, and still no app: the launch process has not exec'd anything.
    let polls = |rig: &Rig| {
        rig.imds
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(STATE))
            .count()
    };
    let before = polls(&rig);
    while polls(&rig) < before + 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        launch.try_wait().unwrap().is_none(),
        "launch ended in the pool"
    );
    assert!(!seen.exists(), "the app ran in the warm pool");
    assert!(
        !rig.sb.path("hooks.log").exists(),
        "per-start.d ran in the pool"
    );

    // While it slept: the secret rotated. Then the group moves it into service.
    put_param("/warm1/db-password", "after-rotation").await;
    let mark = moto().mark();
    rig.orch.into_service(INSTANCE).unwrap();
    rig.imds.set_meta_data(STATE, Some("InService"));
    let out = tokio::time::timeout(Duration::from_secs(60), launch.wait_with_output())
        .await
        .expect("launch went on once in service")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "after-rotation\n",
        "the app sees the secret as it is when the instance goes into service"
    );
    assert_eq!(
        std::fs::read_to_string(rig.sb.path("hooks.log")).unwrap(),
        "start warm-pool\n"
    );
    let counts = moto().counts("warm1-code", mark);
    assert_eq!(
        (counts.list, counts.get),
        (1, 0),
        "one LIST and no download for an unchanged prefix: {counts:?}"
    );
    assert_eq!(
        rig.actions(),
        [
            "launch-warm CONTINUE complete refused=0",
            "launch CONTINUE complete refused=0"
        ]
    );
    assert_eq!(rig.orch.actions()[INSTANCE].state, "InService");
    let record: Value =
        serde_json::from_str(&rig.sb.read("lifecycle/record.json").unwrap()).unwrap();
    assert_eq!(
        (&record["warm"]["result"], &record["asg"]["result"]),
        (&json!("CONTINUE"), &json!("CONTINUE"))
    );
    let done = rig.in_service_says("in-service").await;
    assert_eq!(done["warm"], "Warmed:Running", "{done}");

    // A second ready notice (the app's unit restarted, a reboot in service): no
    // action is waiting, and none is completed again.
    let completions = rig.completions();
    let out = rig.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(rig.completions(), completions, "{:?}", rig.orch.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_in_the_warm_pool_sends_no_second_continue() {
    let params = json!({"bootstage": {"lifecycle": {"asg": {"hook": "launch", "group": "web"}}}});
    let rig = Rig::new(
        Sandbox::new(),
        params,
        "Warmed:Running",
        warm_group("Warmed:Running"),
    )
    .await;
    rig.boot().await;
    assert_eq!(rig.completions(), 1);
    // The reboot: a fresh /run, the same pool state.
    std::fs::remove_dir_all(rig.sb.state()).unwrap();
    rig.boot().await;
    assert_eq!(rig.completions(), 1, "{:?}", rig.orch.calls());
    assert_eq!(rig.actions(), ["launch-warm CONTINUE complete refused=0"]);
    let record: Value =
        serde_json::from_str(&rig.sb.read("lifecycle/record.json").unwrap()).unwrap();
    assert_eq!(
        record["asg"]["note"],
        "the group has the instance Warmed:Running: its launch action is complete"
    );
    // The unit, looking once after a resume: still in the pool, so it leaves it to the
    // waiting unit and returns at once.
    let out = rig.run(&["in-service", "--once"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        rig.in_service_says("waiting").await["warm"],
        "Warmed:Running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_a_warm_pool_the_instance_is_in_service_at_once_and_per_start_runs() {
    let params = json!({"bootstage": {}});
    let rig = Rig::new(Sandbox::new(), params, "InService", Orch::default()).await;
    rig.hook(
        "per-start.d/10-start",
        &format!(
            "echo \"start $BOOTSTAGE_START\" >> {}",
            rig.sb.path("hooks.log").display()
        ),
    );
    for stage in [&["metadata"][..], &["s3-sync"], &["hooks"]] {
        let out = rig.run(stage).await;
        assert_eq!(out.code, 0, "{stage:?}: {}", out.stderr);
    }
    let requests = rig.imds.requests().len();
    let out = rig.run(&["in-service"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        rig.imds.requests().len(),
        requests,
        "in service at boot: IMDS is not asked again"
    );
    assert_eq!(
        std::fs::read_to_string(rig.sb.path("hooks.log")).unwrap(),
        "start boot\n"
    );
    // Once per boot: launch finds it done.
    let out = rig.run(&["launch", "--", "/bin/true"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(rig.sb.path("hooks.log")).unwrap(),
        "start boot\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_on_the_way_into_service_abandons_the_second_action_not_the_first() {
    let params = json!({"bootstage": {"lifecycle": {"asg": {"hook": "launch", "group": "web"}}}});
    let rig = Rig::new(
        Sandbox::new(),
        params,
        "Warmed:Running",
        warm_group("Warmed:Running"),
    )
    .await;
    rig.boot().await;
    rig.hook("per-start.d/10-broken", "echo broken >&2; exit 3");
    let unit = rig.command(&["in-service"]).spawn().unwrap();
    rig.in_service_says("waiting").await;
    rig.orch.into_service(INSTANCE).unwrap();
    rig.imds.set_meta_data(STATE, Some("InService"));
    let out = tokio::time::timeout(Duration::from_secs(60), unit.wait_with_output())
        .await
        .expect("in-service ended once in service")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(
        stderr.contains("hook per-start.d/10-broken exited with 3"),
        "{stderr}"
    );
    assert_eq!(
        rig.in_service_says("waiting").await["warm"],
        "Warmed:Running"
    );
    // What the unit's OnFailure= runs: the notice, then ABANDON of the action of leaving
    // the pool (the warm one stays CONTINUE, on record beside it).
    let out = rig
        .run(&[
            "notify",
            "failure",
            "--unit",
            "bootstage-in-service.service",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        rig.actions(),
        [
            "launch-warm CONTINUE complete refused=0",
            "launch ABANDON complete refused=0"
        ]
    );
    let record: Value =
        serde_json::from_str(&rig.sb.read("lifecycle/record.json").unwrap()).unwrap();
    assert_eq!(
        (&record["warm"]["result"], &record["asg"]["result"]),
        (&json!("CONTINUE"), &json!("ABANDON"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_complete_on_app_the_pools_action_is_still_completed_by_bootstage() {
    let params = json!({"bootstage": {"lifecycle": {
        "asg": {"hook": "launch", "group": "web"}, "complete_on": "app"}}});
    let rig = Rig::new(
        Sandbox::new(),
        params,
        "Warmed:Stopped",
        warm_group("Warmed:Stopped"),
    )
    .await;
    // No app runs in the pool, so nobody else would complete the action of entering it.
    rig.boot().await;
    assert_eq!(rig.actions(), ["launch-warm CONTINUE complete refused=0"]);
}
