//! `bootstage.report` under a real systemd as PID 1 (`boot.rs`'s machine: the Debian
//! package in a bookworm rootfs under systemd-nspawn), with the shipped units' sandboxing
//! (`ProtectSystem=strict`, the report's `RuntimeDirectory=`), which the tests that run the
//! binary by hand cannot show: S3 and EC2 are moto's (behind a loopback proxy that stamps
//! each answer), the instances moto's own (`RunInstances`), IMDS the emulator describing
//! them, Auto Scaling the lifecycle emulator. One disk boots twice: ready as one instance,
//! then as another whose boot hook fails. Order is read from one wall clock (nspawn shares
//! the host's): the proxy's stamps, the emulator's record of each call, the journal's.

use crate::boot::Machine;
use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::moto::moto;
use common::stamped::{Answered, stamped};
use serde_json::{Value, json};

use crate::fleet::{run_instance, tags_of};

const BUCKET: &str = "boot-report";
/// Each secret of the boot carries it; no object uploaded may.
const MARKER: &str = "S3CR3T-BOOTREPORT";
/// What the failing hook says on stderr: the journal's excerpt must hold it.
const HOOK_SAYS: &str = "20-fail: the database at db.internal is not reachable";

/// The checker: once the ready or the failure notice's unit has exited (and, on a ready
/// boot, the lifecycle watcher too), saves what the host asserts on and ends the boot.
const CHECK: &str = r#"#!/bin/sh
exited() { [ "$(systemctl show -p ExecMainExitTimestampMonotonic --value "$1")" != 0 ]; }
i=0
until exited bootstage-ready.service || exited bootstage-failure@bootstage-hooks.service.service; do
  [ $i -ge 1200 ] && { echo 'ready or failure unit' > /results/checker-timeout; break; }
  sleep 0.1; i=$((i+1))
done
if exited bootstage-ready.service; then
  i=0
  while systemctl -q is-active bootstage-lifecycle.service; do
    [ $i -ge 600 ] && { echo 'lifecycle unit' > /results/checker-timeout; break; }
    sleep 0.1; i=$((i+1))
  done
fi
for u in bootstage-ready.service bootstage-failure@bootstage-hooks.service.service bootstage-hooks.service bootstage-lifecycle.service; do
  systemctl show "$u" > "/results/$u.show"
done
cat /proc/sys/kernel/random/boot_id > /results/boot_id
readlink /srv/app/config > /results/current
cat /srv/app/.config.bootstage/generations.json > /results/generations.json
cat /run/bootstage/report/tags.json > /results/tags.json
stat -c '%U %a' /run/bootstage/report > /results/report-dir
journalctl -b --no-pager -o short-unix > /results/journal
systemctl --no-block exit 0
"#;

const CHECK_UNIT: &str = "[Unit]
After=bootstage.target bootstage-ready.service bootstage-lifecycle.service
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/bin/test-check
";

/// The IMDS emulator describing moto's instance `id`, which entered pending `ago` ago, with
/// user-data that syncs the bucket's `app/`, reports to its `boot-logs/`, tags the instance
/// and waits in the group's launch hook; two secrets in the parameters.
async fn imds(id: &str, ago: Duration) -> imds_emulator::Emulator {
    let params = json!({
        "token": format!("{MARKER}-plain \"q\" $HOME `x`"),
        "db": {"password": {"ssm": "/boot-report/db-password"}},
        "bootstage": {
            "sync": [{"from": format!("s3://{BUCKET}/app/"), "to": "/srv/app/config"}],
            "lifecycle": {"asg": {"hook": "launch", "group": "web"}},
            "report": {
                "tags": true,
                "logs": {"to": format!("s3://{BUCKET}/boot-logs/{{instance_id}}/{{boot_id}}")},
            },
        },
    });
    imds_emulator::Emulator::start(imds_emulator::Config {
        user_data: Some(common::b64(&params.to_string()).into()),
        instance: imds_emulator::Instance {
            instance_id: id.into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            pending_time: humantime::format_rfc3339_seconds(SystemTime::now() - ago).to_string(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The machine's environment: IMDS, moto for SSM, the proxy for S3 and EC2, the
/// lifecycle emulator for Auto Scaling.
fn env(imds: &str, proxy: &str, orch: &str) -> String {
    let moto_env: Vec<String> = moto()
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_EC2_METADATA_DISABLED")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\n{}\nAWS_ENDPOINT_URL_S3={proxy}\nAWS_ENDPOINT_URL_EC2={proxy}\nAWS_ENDPOINT_URL_AUTO_SCALING={orch}\n",
        moto_env.join("\n")
    )
}

/// Every object under `prefix`, by its name below it, with its body.
async fn objects(prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let s3 = moto().client().await;
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let body = s3
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec();
        out.insert(key.strip_prefix(prefix).unwrap().to_string(), body);
    }
    out
}

/// When (µs since the epoch) the journal, saved with `-o short-unix`, first holds a line
/// containing `text`.
#[track_caller]
fn logged_at(journal: &str, text: &str) -> u64 {
    let line = journal
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("the journal never says {text:?}:\n{journal}"));
    let stamp: f64 = line.split_whitespace().next().unwrap().parse().unwrap();
    (stamp * 1e6) as u64
}

/// `bootstage:release` for the destination as the boot left it: `config=` and its current
/// generation's version, shortened as `report::tags::short` does.
fn release(r: &crate::boot::Results) -> String {
    let record: Value = serde_json::from_str(&r.text("generations.json")).unwrap();
    let current = r.text("current");
    let current = current.trim().rsplit('/').next().unwrap();
    let version = record["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == current)
        .unwrap_or_else(|| panic!("{current} is not in {record}"))["version"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = version.strip_prefix("sha256:").unwrap();
    format!("config=sha256:{}", &digest[..12])
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A ready boot tags its moto instance `ready` with its release and a plausible ready
/// time; the same disk booted as another instance whose boot hook fails leaves the
/// journal's excerpt (the hook's words, no secret), `status --json` and the records at
/// the prefix, and the tag `failed`, both before ABANDON.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_boot_reports_before_abandon_and_a_ready_one_tags_ready_under_systemd() {
    let _ = crate::boot::rootfs_tar();
    let bucket = moto().bucket(BUCKET).await;
    bucket.put("app/app.conf", "port=8080\n").await;
    moto()
        .ssm()
        .await
        .put_parameter()
        .name("/boot-report/db-password")
        .value(format!("{MARKER}-ssm"))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let (ready_id, _) = run_instance("us-east-1a", &[]).await;
    let (failed_id, _) = run_instance("us-east-1a", &[]).await;
    let orch = lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
        groups: vec![lifecycle_emulator::Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 900.0,
            default_result: "ABANDON".into(),
            instances: vec![ready_id.clone(), failed_id.clone()],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = stamped(&moto().url).await;
    let pending_ago = Duration::from_secs(20);
    let ready_imds = imds(&ready_id, pending_ago).await;
    let set_up = std::time::Instant::now();

    let machine = Machine::new(
        &env(&ready_imds.url(), &proxy.url, &orch.url()),
        "http://127.0.0.1:9/unused",
    );
    machine.without_test_units();
    for file in [
        "etc/bootstage/lifecycle.json",
        "etc/bootstage/notify.json",
        "etc/bootstage/hooks/per-instance.d/10-once",
        "etc/bootstage/hooks/per-boot.d/10-every",
    ] {
        std::fs::remove_file(machine.root().join(file)).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        machine.write("usr/local/bin/test-check", CHECK);
        std::fs::set_permissions(
            machine.root().join("usr/local/bin/test-check"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    machine.write("etc/systemd/system/test-check.service", CHECK_UNIT);

    // 1. Ready.
    let (ready, machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = ready.text("journal");
    let waited = set_up.elapsed().as_secs() + 1;
    let tags = tags_of(&ready_id).await;
    let seconds: u64 = tags
        .get("bootstage:ready-seconds")
        .unwrap_or_else(|| panic!("no ready-seconds: {tags:?}\n{journal}"))
        .parse()
        .unwrap();
    // pendingTime is written in whole seconds: up to one more.
    assert!(
        (pending_ago.as_secs()..=pending_ago.as_secs() + waited).contains(&seconds),
        "pending {} s before the machine was set up, ready {seconds} s after it ({waited} s later)",
        pending_ago.as_secs()
    );
    let want = map(&[
        ("bootstage:ready-seconds", &seconds.to_string()),
        ("bootstage:release", &release(&ready)),
        ("bootstage:status", "ready"),
    ]);
    assert_eq!(tags, want, "{journal}");
    // What the sandboxed ready unit recorded, in its RuntimeDirectory=.
    let written: Value = serde_json::from_str(&ready.text("tags.json")).unwrap();
    assert_eq!(written["instance_id"], ready_id.as_str());
    assert_eq!(
        serde_json::from_value::<BTreeMap<String, String>>(written["tags"].clone()).unwrap(),
        want
    );
    assert_eq!(ready.text("report-dir"), "root 700\n");
    for unit in ["bootstage-ready.service", "bootstage-lifecycle.service"] {
        assert_eq!(
            ready.unit(unit).get("Result").map(String::as_str),
            Some("success"),
            "{unit}: {journal}"
        );
    }
    assert_eq!(
        ready
            .unit("bootstage-ready.service")
            .get("ProtectSystem")
            .map(String::as_str),
        Some("strict")
    );
    assert!(!journal.contains("was not written"), "{journal}");
    // The watcher's booting, then ready: two writes, the second only what changed.
    let creates: Vec<Answered> = proxy
        .answered()
        .into_iter()
        .filter(|a| a.action.as_deref() == Some("CreateTags"))
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}\n{journal}");
    assert!(
        logged_at(&journal, "bootstage:status=booting")
            < logged_at(&journal, "bootstage:status=ready"),
        "{journal}"
    );
    let continued: Vec<_> = orch
        .calls()
        .into_iter()
        .filter(|c| c.action == "CompleteLifecycleAction")
        .map(|c| {
            (
                c.params["InstanceId"].clone(),
                c.params["LifecycleActionResult"].clone(),
            )
        })
        .collect();
    assert_eq!(continued, [(ready_id.clone(), "CONTINUE".to_string())]);
    assert!(
        objects("boot-logs/").await.is_empty(),
        "a ready boot uploads no forensics"
    );

    // 2. The same disk as another instance, whose boot hook fails.
    let failed_imds = imds(&failed_id, Duration::from_secs(5)).await;
    machine.write_env(&env(&failed_imds.url(), &proxy.url, &orch.url()));
    machine.hook(
        "per-boot.d/20-fail",
        &format!("echo '{HOOK_SAYS}' >&2\nexit 3"),
    );
    let mark = proxy.answered().len();
    let (failed, _machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let journal = failed.text("journal");
    let failure = failed.unit("bootstage-failure@bootstage-hooks.service.service");
    assert_eq!(
        failure.get("Result").map(String::as_str),
        Some("success"),
        "{journal}"
    );
    assert_eq!(
        failure.get("ProtectSystem").map(String::as_str),
        Some("strict")
    );
    assert_eq!(
        failed
            .unit("bootstage-hooks.service")
            .get("Result")
            .map(String::as_str),
        Some("exit-code")
    );

    // The forensics: where the settings say (the boot as the machine's journal knows it:
    // in the sandbox of a container, the kernel's boot_id is the host's), the excerpt
    // with the hook's words, no secret.
    let prefix = format!("boot-logs/{failed_id}/{}/", failed.text("boot_id").trim());
    let got = objects(&prefix).await;
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "journal.log",
            "records/hooks.json",
            "records/metadata.json",
            "records/s3-sync.json",
            "status.json"
        ],
        "{prefix}: {:?}\n{journal}",
        objects("boot-logs/").await.keys().collect::<Vec<_>>()
    );
    assert_eq!(objects("boot-logs/").await.len(), got.len());
    let excerpt = String::from_utf8_lossy(&got["journal.log"]).into_owned();
    assert!(
        excerpt.contains(HOOK_SAYS),
        "the excerpt lacks the hook's words:\n{excerpt}\n{journal}"
    );
    for (name, body) in &got {
        assert!(
            !String::from_utf8_lossy(body).contains(MARKER),
            "{name} holds a secret"
        );
    }
    let status: Value = serde_json::from_slice(&got["status.json"]).unwrap();
    assert_eq!(status["state"], "failed");
    assert_eq!(
        common::states(&status["stages"]),
        ["done", "done", "failed"]
    );
    let hooks: Value = serde_json::from_slice(&got["records/hooks.json"]).unwrap();
    assert_eq!(hooks["state"], "failed");

    // The tag: failed, with the release the failed boot had synced.
    assert_eq!(
        tags_of(&failed_id).await,
        map(&[
            ("bootstage:release", &release(&failed)),
            ("bootstage:status", "failed"),
        ]),
        "{journal}"
    );

    // The order, from one clock: every upload and the failed tag were answered before the
    // group took ABANDON, as the journal's own lines say too.
    let abandons: Vec<u64> = orch
        .calls()
        .into_iter()
        .filter(|c| {
            c.action == "CompleteLifecycleAction" && c.params.get("InstanceId") == Some(&failed_id)
        })
        .map(|c| {
            assert_eq!(c.params["LifecycleActionResult"], "ABANDON");
            assert_eq!(c.status, 200);
            c.unix_usec
        })
        .collect();
    assert_eq!(abandons.len(), 1, "{journal}");
    let abandon = abandons[0];
    let during: Vec<Answered> = proxy.answered()[mark..].to_vec();
    let puts: Vec<u64> = during
        .iter()
        .filter(|a| a.request.starts_with(&format!("PUT /{BUCKET}/{prefix}")))
        .map(|a| a.usec)
        .collect();
    assert_eq!(puts.len(), got.len(), "{during:?}");
    let tagged: Vec<u64> = during
        .iter()
        .filter(|a| a.action.as_deref() == Some("CreateTags"))
        .map(|a| a.usec)
        .collect();
    assert!(!tagged.is_empty());
    let last_put = *puts.iter().max().unwrap();
    let last_tag = *tagged.iter().max().unwrap();
    assert!(
        last_put < abandon,
        "ABANDON at {abandon} before the last upload at {last_put}"
    );
    assert!(
        last_tag < abandon,
        "ABANDON at {abandon} before the failed tag at {last_tag}"
    );
    let uploaded = logged_at(&journal, "the failed boot's forensics are at s3://");
    let said_failed = logged_at(&journal, "bootstage:status=failed");
    assert!(
        uploaded < abandon && said_failed < abandon,
        "the journal says the upload at {uploaded} and the tag at {said_failed}, ABANDON at {abandon}"
    );
    eprintln!(
        "failed boot: tag {:.3} s, last upload {:.3} s before ABANDON",
        (abandon - last_tag) as f64 / 1e6,
        (abandon - last_put) as f64 / 1e6
    );
}
