//! Warm pools under a real systemd as PID 1 (`boot.rs`'s machine: the Debian package in a
//! bookworm rootfs under systemd-nspawn; IMDS, the lifecycle emulator and moto on the
//! host's loopback). An app ordered after `bootstage-in-service.target`, as the shipped
//! examples are. Asserted from systemd's own records, the app's and hooks' files, the
//! emulators' calls and moto's log (one wall clock: nspawn shares the host's).

use crate::boot::Machine;
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::actions;
use common::moto::moto;
use common::webhook::Webhook;
use serde_json::json;

const STOPPED: &str = "i-0a0a0a0a0a0a0a0a0";
const RUNNING: &str = "i-0b0b0b0b0b0b0b0b0";
const STATE: &str = "autoscaling/target-lifecycle-state";

/// The app: `bootstage launch`, stamping its start (µs since the epoch) and the secret
/// it sees.
const APP: &str = "[Unit]
Requires=bootstage-in-service.target
After=bootstage-in-service.target
[Service]
ExecStart=/usr/bin/bootstage launch -- /bin/sh -c 'date +%%s%%6N > /results/app-started; printenv DB_PASSWORD > /results/app-secret; exec sleep infinity'
[Install]
WantedBy=bootstage-in-service.target
";

/// In the pool: ends the boot once the ready unit has completed the warm action and the
/// in-service unit says it waits (its STATUS=), saving what the host asserts on.
const CHECK_WARM: &str = "[Unit]
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'i=0; until systemctl show -p StatusText --value bootstage-in-service.service | grep -q \"warm pool\" && [ \"$(systemctl show -p ActiveState --value bootstage-ready.service)\" = inactive ] && [ -n \"$(systemctl show -p ExecMainExitTimestampMonotonic --value bootstage-ready.service | grep -v ^0$)\" ]; do [ $i -ge 1200 ] && { echo waited 120 s > /results/checker-timeout; break; }; sleep 0.1; i=$((i+1)); done; sleep 1; for u in warm-app.service bootstage-in-service.service bootstage-in-service.target bootstage-ready.service bootstage.target multi-user.target; do systemctl show $u > /results/$u.show; done; journalctl -b --no-pager -o short-monotonic > /results/journal; systemctl --no-block exit 0'
";

/// In service: ends the boot once the app has started and the ready unit (which completes
/// a new boot's launch action, beside the app) has finished.
const CHECK_STARTED: &str = "[Unit]
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'i=0; until [ -s /results/app-secret ] && [ \"$(systemctl show -p ActiveState --value bootstage-ready.service)\" = inactive ] && [ -n \"$(systemctl show -p ExecMainExitTimestampMonotonic --value bootstage-ready.service | grep -v ^0$)\" ]; do [ $i -ge 1200 ] && { echo waited 120 s > /results/checker-timeout; break; }; sleep 0.1; i=$((i+1)); done; for u in warm-app.service bootstage-in-service.service bootstage-ready.service; do systemctl show $u > /results/$u.show; done; journalctl -b --no-pager -o short-monotonic > /results/journal; systemctl --no-block exit 0'
";

fn group(name: &str, pool: &str, instance: &str) -> lifecycle_emulator::Group {
    lifecycle_emulator::Group {
        name: name.into(),
        hook: "launch".into(),
        heartbeat_timeout: 900.0,
        instances: vec![instance.into()],
        warm_pool: Some(pool.into()),
        ..Default::default()
    }
}

async fn imds(group: &str, instance: &str, pool: &str) -> Arc<imds_emulator::Emulator> {
    let params = json!({
        "db": {"password": {"ssm": "/warm-boot/db-password"}},
        "bootstage": {
            "sync": [{"from": "s3://warm-boot/app/", "to": "/srv/app/config"}],
            "lifecycle": {"asg": {"hook": "launch", "group": group}},
        },
    });
    Arc::new(
        imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(common::b64(&params.to_string()).into()),
            target_lifecycle_state: Some(pool.into()),
            instance: imds_emulator::Instance {
                instance_id: instance.into(),
                region: "us-east-1".into(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap(),
    )
}

fn machine(imds: &str, orch: &str, notices: &str) -> Machine {
    let moto_env: Vec<String> = moto()
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_EC2_METADATA_DISABLED")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let env = format!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\n{}\nAWS_ENDPOINT_URL_AUTO_SCALING={orch}\nAWS_ENDPOINT_URL_CLOUDFORMATION={orch}\n",
        moto_env.join("\n")
    );
    let machine = Machine::new(&env, notices);
    machine.without_test_units();
    let _ = std::fs::remove_file(machine.root().join("etc/bootstage/lifecycle.json"));
    // boot.rs's own hooks read its parameters; these boots have others.
    for hook in ["per-instance.d/10-once", "per-boot.d/10-every"] {
        std::fs::remove_file(machine.root().join("etc/bootstage/hooks").join(hook)).unwrap();
    }
    machine.write("etc/systemd/system/warm-app.service", APP);
    let wants = machine
        .root()
        .join("etc/systemd/system/bootstage-in-service.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/warm-app.service",
        wants.join("warm-app.service"),
    )
    .unwrap();
    machine.hook(
        "per-start.d/10-start",
        "echo \"start $BOOTSTAGE_START\" >> /results/per-start.log",
    );
    machine
}

async fn put_secret(value: &str) {
    moto()
        .ssm()
        .await
        .put_parameter()
        .name("/warm-boot/db-password")
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

/// Boot 1 in `Warmed:Stopped`: the chain runs and the warm action is completed once, the
/// app never starts. Boot 2 of the same disk in service: the rotated secret, no
/// download, per-start.d, the second CONTINUE, the app. Then a `Warmed:Running` instance
/// switched to `InService` while it runs starts its app within 6 s of the switch.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_instance_runs_its_app_only_in_service() {
    let _ = crate::boot::rootfs_tar();
    let orch = Arc::new(
        lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
            groups: vec![
                group("warm-stopped", "Warmed:Stopped", STOPPED),
                group("warm-running", "Warmed:Running", RUNNING),
            ],
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let webhook = Webhook::start(&[]).await;
    let bucket = moto().bucket("warm-boot").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    put_secret("before-rotation").await;

    // Boot 1: into the pool.
    let imds_stopped = imds("warm-stopped", STOPPED, "Warmed:Stopped").await;
    let machine = machine(&imds_stopped.url(), &orch.url(), &webhook.url);
    machine.write("etc/systemd/system/test-check.service", CHECK_WARM);
    let (r, machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = r.text("journal");
    assert_eq!(
        actions(&orch, STOPPED),
        ["launch-warm CONTINUE complete refused=0"],
        "{journal}"
    );
    let app = r.unit("warm-app.service");
    assert_eq!(
        (
            app["ActiveState"].as_str(),
            app["ExecMainStartTimestampMonotonic"].as_str()
        ),
        ("inactive", "0"),
        "the app never started in the pool: {journal}"
    );
    let waiting = r.unit("bootstage-in-service.service");
    assert_eq!(
        (
            waiting["ActiveState"].as_str(),
            waiting["StatusText"].as_str()
        ),
        (
            "activating",
            "in the warm pool (Warmed:Stopped): the app starts when the instance goes into service"
        ),
        "{journal}"
    );
    // The boot itself was not held up by the pool.
    assert_eq!(
        r.unit("multi-user.target")["ActiveState"],
        "active",
        "{journal}"
    );
    assert!(
        std::fs::metadata(r.dir.path().join("per-start.log")).is_err(),
        "per-start.d ran in the pool"
    );

    // Boot 2 of the same disk: the group starts it into service; the secret rotated
    // while it was stopped.
    put_secret("after-rotation").await;
    orch.into_service(STOPPED).unwrap();
    imds_stopped.set_meta_data(STATE, Some("InService"));
    let mark = moto().mark();
    machine.write("etc/systemd/system/test-check.service", CHECK_STARTED);
    let (r, _machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = r.text("journal");
    assert_eq!(r.text("app-secret"), "after-rotation\n", "{journal}");
    assert_eq!(r.text("per-start.log"), "start boot\n", "{journal}");
    assert_eq!(
        actions(&orch, STOPPED),
        [
            "launch-warm CONTINUE complete refused=0",
            "launch CONTINUE complete refused=0"
        ],
        "{journal}"
    );
    let counts = moto().counts("warm-boot", mark);
    assert_eq!(
        (counts.list, counts.get),
        (1, 0),
        "one LIST, no download: {counts:?}"
    );

    // A Warmed:Running instance: the switch happens while it runs.
    let imds_running = imds("warm-running", RUNNING, "Warmed:Running").await;
    let machine = self::machine(&imds_running.url(), &orch.url(), &webhook.url);
    machine.write("etc/systemd/system/test-check.service", CHECK_STARTED);
    let (during_imds, during_orch) = (imds_running.clone(), orch.clone());
    let r = tokio::task::spawn_blocking(move || {
        machine.boot_with(|_| {
            // The warm action complete, and the in-service unit polling: then the switch.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let polls = || {
                during_imds
                    .requests()
                    .iter()
                    .filter(|r| r.path.ends_with(STATE))
                    .count()
            };
            let warm_done =
                || during_orch.actions()[RUNNING].actions[0].result.as_deref() == Some("CONTINUE");
            while !warm_done() || polls() < 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the warm action was never completed, or nobody polled the state"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            during_orch.into_service(RUNNING).unwrap();
            during_imds.set_meta_data(STATE, Some("InService"));
        })
    })
    .await
    .unwrap();
    let journal = r.text("journal");
    let switched = imds_running
        .changes()
        .into_iter()
        .find(|c| c.path == STATE)
        .unwrap()
        .unix;
    let started: f64 = r.text("app-started").trim().parse::<f64>().unwrap() / 1e6;
    assert!(
        started > switched && started - switched <= 6.0,
        "the app started {:.2} s after the switch: {journal}",
        started - switched
    );
    assert_eq!(r.text("per-start.log"), "start warm-pool\n", "{journal}");
    assert_eq!(
        actions(&orch, RUNNING),
        [
            "launch-warm CONTINUE complete refused=0",
            "launch CONTINUE complete refused=0"
        ],
        "{journal}"
    );
    println!(
        "warm pool: the app started {:.2} s after the switch to InService",
        started - switched
    );
}
