//! `bootstage image prepare` under a real systemd as PID 1 (`boot.rs`'s machine: the Debian
//! package in a bookworm rootfs under systemd-nspawn; IMDS and moto on the host's loopback):
//! the disk of an instance that booted, prepared as the image recipe's last step, boots
//! as another instance as a first boot.

use crate::boot::Machine;
use crate::common;

use common::moto::moto;
use serde_json::json;

const FIRST: &str = "i-0a1a1a1a1a1a1a1a1";
const SECOND: &str = "i-0b2b2b2b2b2b2b2b2";

/// Boot 1's checker, once the chain is through: what instance A left, then `image
/// prepare` three ways: refused while a bootstage unit runs, a dry run, the real one.
const CHECK_PREPARE: &str = r#"#!/bin/sh
i=0
while systemctl -q is-active bootstage-lifecycle.service || [ -z "$(systemctl show -p ExecMainExitTimestampMonotonic --value bootstage-ready.service | grep -v '^0$')" ]; do
  [ $i -ge 600 ] && { echo 'lifecycle or ready unit' > /results/checker-timeout; break; }
  sleep 0.1; i=$((i+1))
done
bootstage status --json > /results/status.json
ls /var/lib/bootstage/instances > /results/instances-before
systemd-run -q --unit=bootstage-test-busy.service /bin/sleep infinity
bootstage image prepare > /results/busy.out 2> /results/busy.err; echo $? > /results/busy.rc
systemctl stop bootstage-test-busy.service
bootstage image prepare --dry-run > /results/dry.out 2> /results/dry.err; echo $? > /results/dry.rc
bootstage image prepare > /results/prepare.out 2> /results/prepare.err; echo $? > /results/prepare.rc
journalctl -b --no-pager -o short-monotonic > /results/journal
systemctl --no-block exit 0
"#;

/// Boot 2's checker: where instance B stands.
const CHECK_SECOND: &str = r#"#!/bin/sh
bootstage status --json > /results/status.json; echo $? > /results/status.rc
bootstage query instance.instance_id > /results/instance-id
ls /var/lib/bootstage/instances > /results/instances
cat /srv/app/config/app.conf > /results/app-conf
ls -a /srv/app > /results/srv-app
journalctl -b --no-pager -o short-monotonic > /results/journal
systemctl --no-block exit 0
"#;

const CHECK_UNIT: &str = "[Unit]
After=bootstage.target bootstage-ready.service bootstage-lifecycle.service
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/bin/test-check
";

async fn imds(instance: &str) -> imds_emulator::Emulator {
    let params = json!({
        "bootstage": {"sync": [{"from": "s3://image-boot/app/", "to": "/srv/app/config"}]},
    });
    imds_emulator::Emulator::start(imds_emulator::Config {
        user_data: Some(common::b64(&params.to_string()).into()),
        instance: imds_emulator::Instance {
            instance_id: instance.into(),
            region: "us-east-1".into(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn env(imds: &str) -> String {
    let moto_env: Vec<String> = moto()
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_EC2_METADATA_DISABLED")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\n{}\n",
        moto_env.join("\n")
    )
}

fn checker(machine: &Machine, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    machine.write("usr/local/bin/test-check", script);
    std::fs::set_permissions(
        machine.root().join("usr/local/bin/test-check"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    machine.write("etc/systemd/system/test-check.service", CHECK_UNIT);
}

/// Boot as instance A, `image prepare`, boot the same disk as instance B: B's
/// per-instance hooks run, nothing of A is left (no marker, no record, no synced tree:
/// B downloads its own), and B's boot is done.
#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_image_boots_the_next_instance_as_a_first_boot() {
    let _ = crate::boot::rootfs_tar();
    let bucket = moto().bucket("image-boot").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    let first = imds(FIRST).await;
    let second = imds(SECOND).await;

    let machine = Machine::new(&env(&first.url()), "http://127.0.0.1:9/unused");
    machine.without_test_units();
    for file in ["etc/bootstage/lifecycle.json", "etc/bootstage/notify.json"] {
        std::fs::remove_file(machine.root().join(file)).unwrap();
    }
    for hook in ["per-instance.d/10-once", "per-boot.d/10-every"] {
        std::fs::remove_file(machine.root().join("etc/bootstage/hooks").join(hook)).unwrap();
    }
    machine.hook(
        "per-instance.d/10-once",
        "echo \"per-instance $BOOTSTAGE_INSTANCE_ID\" >> /results/hooks.log",
    );
    machine.hook(
        "per-boot.d/10-every",
        "echo \"per-boot $BOOTSTAGE_INSTANCE_ID\" >> /results/hooks.log",
    );

    // Boot 1: instance A, then the recipe's last step.
    checker(&machine, CHECK_PREPARE);
    let (r, machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = r.text("journal");
    assert_eq!(
        r.text("hooks.log"),
        format!("per-instance {FIRST}\nper-boot {FIRST}\n"),
        "{journal}"
    );
    assert_eq!(r.text("instances-before"), format!("{FIRST}\n"));
    let status: serde_json::Value = serde_json::from_str(&r.text("status.json")).unwrap();
    assert_eq!(status["state"], "done", "{status}");
    // Refused while a bootstage unit runs, and said why.
    assert_eq!(r.text("busy.rc"), "75\n", "{}", r.text("busy.err"));
    assert_eq!(r.text("busy.out"), "");
    assert!(
        r.text("busy.err").contains(
            "bootstage units are busy: bootstage-test-busy.service (active running); a stage or \
             watcher that is running would write its state back after it is removed. Stop them \
             (systemctl stop bootstage-test-busy.service), or pass --force"
        ),
        "{}",
        r.text("busy.err")
    );
    // The dry run lists exactly what the run then removes.
    let removed = [
        "/srv/app/config (a synced destination: the link to its current generation)".to_string(),
        "/srv/app/.config.bootstage (the generations synced to /srv/app/config)".into(),
        format!("/var/lib/bootstage/instances/{FIRST} (per-instance markers of {FIRST})"),
        "/run/bootstage/.in-service.lock (a lock)".into(),
        "/run/bootstage/.lock (a lock)".into(),
        "/run/bootstage/.values (the parameters' values behind their links)".into(),
        "/run/bootstage/credentials (the secrets' credential files)".into(),
        "/run/bootstage/hooks.env (the hooks' environment)".into(),
        "/run/bootstage/in-service.json (the in-service record)".into(),
        "/run/bootstage/instance.json (the instance's facts)".into(),
        "/run/bootstage/lifecycle (the lifecycle and warm-pool record)".into(),
        "/run/bootstage/params.env (the parameters as environment)".into(),
        "/run/bootstage/params.json (the parameters)".into(),
        "/run/bootstage/report (the status tags last written)".into(),
        "/run/bootstage/status (the stages' status records)".into(),
        "/run/bootstage (the state dir)".into(),
    ];
    let lines = |verb: &str| {
        removed
            .iter()
            .map(|l| format!("{verb} {l}\n"))
            .collect::<String>()
    };
    assert_eq!(r.text("dry.rc"), "0\n", "{}", r.text("dry.err"));
    assert_eq!(r.text("dry.out"), lines("would remove"), "{journal}");
    assert_eq!(r.text("prepare.rc"), "0\n", "{}", r.text("prepare.err"));
    assert_eq!(r.text("prepare.out"), lines("removed"), "{journal}");
    // What the image carries: nothing of A on its disk.
    let names = |rel: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(machine.root().join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names("var/lib/bootstage/instances"), Vec::<String>::new());
    assert_eq!(names("srv/app"), Vec::<String>::new());

    // Boot 2 of the prepared disk: instance B.
    machine.write_env(&env(&second.url()));
    checker(&machine, CHECK_SECOND);
    let mark = moto().mark();
    let (r, _machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = r.text("journal");
    assert_eq!(
        r.text("hooks.log"),
        format!("per-instance {SECOND}\nper-boot {SECOND}\n"),
        "{journal}"
    );
    assert_eq!(r.text("instances"), format!("{SECOND}\n"), "{journal}");
    assert_eq!(r.text("instance-id"), format!("{SECOND}\n"), "{journal}");
    assert_eq!(r.text("status.rc"), "0\n", "{journal}");
    let status: serde_json::Value = serde_json::from_str(&r.text("status.json")).unwrap();
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(r.text("app-conf"), "port=8080\n", "{journal}");
    let counts = moto().counts("image-boot", mark);
    assert_eq!(
        (counts.list, counts.get),
        (1, 1),
        "B synced its own tree, from nothing: {counts:?}"
    );
    assert!(!journal.contains(FIRST), "{journal}");
}
