//! `bootstage.report`: a failed boot's forensics in S3 (moto) before ABANDON (the
//! lifecycle emulator), and the boot's metrics as embedded metric format lines. The
//! stages are the real binary against the IMDS emulator and moto; the journal is a script
//! standing in for journalctl (no systemd here) that prints what the stages really wrote
//! on stderr, which is what journald would hold for their units.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::moto::moto;
use common::stamped::stamped;
use common::{Outcome, Sandbox, b64};
use lifecycle_emulator::{Config as Orch, Emulator as Orchestrator, Group};
use serde_json::{Value, json};

const INSTANCE: &str = "i-0123456789abcdef0";

/// An instance booted by the real metadata stage (IMDS emulator, SSM in moto) with
/// `params`, in a group whose launch hook waits for it.
struct Rig {
    sb: Sandbox,
    orch: Orchestrator,
    _imds: imds_emulator::Emulator,
    /// What the stages wrote on stderr, in order: the fake journal prints it.
    journal: String,
}

impl Rig {
    /// `SANDBOX` in `params` is the sandbox's directory (a sync destination stays in it).
    async fn new(params: Value, imds: imds_emulator::Config) -> Rig {
        let sb = Sandbox::new();
        let params = params
            .to_string()
            .replace("SANDBOX", sb.dir.path().to_str().unwrap());
        let imds = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(b64(&params).into()),
            ..imds
        })
        .await
        .unwrap();
        let orch = Orchestrator::start(Orch {
            groups: vec![Group {
                name: "web".into(),
                hook: "launch".into(),
                heartbeat_timeout: 300.0,
                default_result: "ABANDON".into(),
                instances: vec![INSTANCE.into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cmd = sb.command(&["metadata", "--imds-endpoint", &imds.url()]);
        cmd.envs(moto().env());
        let out = common::run(cmd).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let journal = out.stderr;
        let mut rig = Rig {
            sb,
            orch,
            _imds: imds,
            journal,
        };
        rig.fake_journal();
        rig
    }

    /// The journalctl stand-in: records its arguments, prints the stages' stderr.
    fn fake_journal(&mut self) {
        std::fs::write(self.sb.path("journal.txt"), &self.journal).unwrap();
        let script = self.sb.path("journalctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\ncat {}\n",
                self.sb.path("journalctl.args").display(),
                self.sb.path("journal.txt").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn command(&self, args: &[&str], s3: &str) -> tokio::process::Command {
        let mut cmd = self.sb.command(args);
        cmd.envs(moto().env())
            .env("AWS_ENDPOINT_URL_S3", s3)
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", self.orch.url());
        cmd
    }

    /// A stage that fails: its stderr joins the journal.
    async fn fail(&mut self, stage: &str) -> Outcome {
        let out = common::run(self.command(&[stage], &moto().url)).await;
        assert_ne!(out.code, 0, "{} was meant to fail", stage);
        self.journal += &out.stderr;
        self.fake_journal();
        out
    }

    async fn notify(&self, event: &str, unit: Option<&str>, s3: &str) -> Outcome {
        let journalctl = self.sb.path("journalctl");
        let mut args = vec![
            "notify",
            event,
            "--journalctl",
            journalctl.to_str().unwrap(),
        ];
        if let Some(unit) = unit {
            args.extend(["--unit", unit]);
        }
        common::run(self.command(&args, s3)).await
    }

    /// Each CompleteLifecycleAction: its result and when the emulator took it (µs).
    fn completions(&self) -> Vec<(String, u64)> {
        self.orch
            .calls()
            .iter()
            .filter(|c| c.action == "CompleteLifecycleAction")
            .map(|c| {
                (
                    c.params
                        .get("LifecycleActionResult")
                        .cloned()
                        .unwrap_or_default(),
                    c.unix_usec,
                )
            })
            .collect()
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// Every object under `prefix` in `bucket`, by its name below the prefix.
async fn objects(bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let s3 = moto().client().await;
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut out = BTreeMap::new();
    for object in listed.contents() {
        let key = object.key().unwrap();
        let body = s3
            .get_object()
            .bucket(bucket)
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
        let name = key
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{key} is not under {prefix}"));
        out.insert(name.to_string(), body);
    }
    out
}

/// The secrets of a boot: the adversarial fixture's values, each behind a marker no log
/// line could hold by chance, as ordinary parameters and one SSM SecureString.
const MARKER: &str = "S3CR3T-REPORT";

async fn secret_params(ssm_name: &str) -> Value {
    let mut secrets = serde_json::Map::new();
    for (i, value) in common::adversarial::values(40, 30).into_iter().enumerate() {
        secrets.insert(format!("k{i}"), json!(format!("{MARKER}-{i}-{value}")));
    }
    moto()
        .ssm()
        .await
        .put_parameter()
        .name(ssm_name)
        .value(format!("{MARKER}-ssm-value"))
        .r#type("SecureString".into())
        .overwrite(true)
        .send()
        .await
        .unwrap();
    json!({"secrets": secrets, "db": {"password": {"ssm": ssm_name}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sync_leaves_its_journal_and_status_in_s3_before_abandon() {
    let logs = moto().bucket("report-forensics").await;
    let proxy = stamped(&moto().url).await;
    let mut params = secret_params("/report/db-password").await;
    params["bootstage"] = json!({
        // The source bucket does not exist: the sync stage fails.
        "sync": [{"from": "s3://report-no-such-source/conf/", "to": "SANDBOX/conf"}],
        "lifecycle": {"asg": {"hook": "launch", "group": "web"}},
        "report": {"logs": {"to": "s3://report-forensics/boot-logs/{instance_id}/{boot_id}",
                            "units": ["myapp.service"]}},
    });
    let mut rig = Rig::new(params, Default::default()).await;
    assert!(
        rig.sb.read("params.json").unwrap().contains(MARKER),
        "the boot holds the secrets"
    );
    rig.fail("s3-sync").await;
    let out = rig
        .notify("failure", Some("bootstage-s3-sync.service"), &proxy.url)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "no metrics unless asked");

    // What went, where.
    let prefix = format!("boot-logs/{INSTANCE}/{}/", boot_id());
    let got = objects(&logs.name, &prefix).await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        [
            "journal.log",
            "records/metadata.json",
            "records/s3-sync.json",
            "status.json"
        ]
    );
    for (name, body) in &got {
        assert!(
            !String::from_utf8_lossy(body).contains(MARKER),
            "{name} holds a secret"
        );
    }
    assert_eq!(String::from_utf8_lossy(&got["journal.log"]), rig.journal);
    assert!(
        rig.journal.contains("report-no-such-source"),
        "the excerpt says why: {}",
        rig.journal
    );
    assert_eq!(
        std::fs::read_to_string(rig.sb.path("journalctl.args")).unwrap(),
        "-b\n-o\nshort-monotonic\n--no-pager\n--lines\n2000\n--unit=bootstage-*\n--unit=myapp.service\n"
    );
    for stage in ["metadata", "s3-sync"] {
        assert_eq!(
            got[&format!("records/{stage}.json")],
            std::fs::read(rig.sb.state().join(format!("status/{stage}.json"))).unwrap()
        );
    }
    let status: Value = serde_json::from_slice(&got["status.json"]).unwrap();
    assert_eq!(status["state"], "failed");
    let stages: Vec<String> = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["stage"].as_str().unwrap(),
                r["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(stages, ["metadata done", "s3-sync failed", "hooks pending"]);
    assert!(
        out.stderr.contains(&format!(
            "the failed boot's forensics are at s3://report-forensics/{prefix} (4 objects)"
        )),
        "{}",
        out.stderr
    );

    // Before ABANDON: every upload was answered before the group heard of it.
    let puts: Vec<u64> = proxy
        .answered()
        .iter()
        .filter(|a| a.request.starts_with("PUT /report-forensics/"))
        .map(|a| a.usec)
        .collect();
    assert_eq!(puts.len(), 4, "{:?}", proxy.answered());
    let completions = rig.completions();
    assert_eq!(
        completions.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["ABANDON"]
    );
    let last_put = puts.iter().max().unwrap();
    assert!(
        *last_put < completions[0].1,
        "ABANDON at {} before the last upload at {last_put}",
        completions[0].1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_fails_never_holds_the_abandon() {
    let params = json!({"bootstage": {
        "sync": [{"from": "s3://report-no-such-source-2/conf/", "to": "SANDBOX/conf"}],
        "lifecycle": {"asg": {"hook": "launch", "group": "web"}},
        "report": {"logs": "s3://report-no-such-logs-bucket/{instance_id}/"},
    }});
    let mut rig = Rig::new(params, Default::default()).await;
    rig.fail("s3-sync").await;
    let out = rig
        .notify("failure", Some("bootstage-s3-sync.service"), &moto().url)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the failed boot's forensics were not uploaded: s3://report-no-such-logs-bucket/{INSTANCE}/journal.log: NoSuchBucket"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(
        rig.completions()
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["ABANDON"]
    );
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the refusal was not retried: {:?}",
        out.elapsed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_boot_writes_one_embedded_metric_format_line() {
    let params = json!({"bootstage": {"report": {"metrics": true}}});
    let pending = SystemTime::now() - Duration::from_secs(30);
    let imds = imds_emulator::Config {
        tags: Some(BTreeMap::from([(
            "aws:autoscaling:groupName".to_string(),
            "web-asg".to_string(),
        )])),
        instance: imds_emulator::Instance {
            pending_time: humantime::format_rfc3339_seconds(pending).to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let rig = Rig::new(params, imds).await;
    let before = SystemTime::now();
    let out = rig.notify("ready", None, &moto().url).await;
    let after = SystemTime::now();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line: Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    // The numbers that vary, checked for what they must be; then the whole line, exactly.
    let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let timestamp = line["_aws"]["Timestamp"].as_u64().unwrap();
    assert!((ms(before)..=ms(after)).contains(&timestamp), "{timestamp}");
    let ttr = line["TimeToReady"].as_f64().unwrap();
    assert!((29.0..120.0).contains(&ttr), "TimeToReady {ttr}");
    let record: Value =
        serde_json::from_str(&rig.sb.read("status/metadata.json").unwrap()).unwrap();
    let metadata_ms = record["duration_ms"].as_u64().unwrap();
    assert_eq!(
        line["MetadataDuration"].as_f64().unwrap(),
        metadata_ms as f64 / 1000.0
    );
    let expected = format!(
        concat!(
            r#"{{"_aws":{{"Timestamp":{},"CloudWatchMetrics":[{{"Namespace":"bootstage","#,
            r#""Dimensions":[["AutoScalingGroupName"]],"Metrics":[{{"Name":"TimeToReady","Unit":"Seconds"}},"#,
            r#"{{"Name":"MetadataDuration","Unit":"Seconds"}},{{"Name":"BootFailed","Unit":"Count"}}]}}]}},"#,
            r#""AutoScalingGroupName":"web-asg","TimeToReady":{},"MetadataDuration":{},"BootFailed":0}}"#,
            "\n"
        ),
        timestamp, line["TimeToReady"], line["MetadataDuration"]
    );
    assert_eq!(out.stdout, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_boot_counts_in_boot_failed() {
    let params = json!({"bootstage": {
        "sync": [{"from": "s3://report-no-such-source-3/conf/", "to": "SANDBOX/conf"}],
        "lifecycle": {"asg": {"hook": "launch", "group": "web"}},
        "report": {"metrics": true},
    }});
    let mut rig = Rig::new(params, Default::default()).await;
    rig.fail("s3-sync").await;
    let out = rig
        .notify("failure", Some("bootstage-s3-sync.service"), &moto().url)
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line: Value = serde_json::from_str(out.stdout.trim_end()).unwrap();
    assert_eq!(
        line["_aws"]["CloudWatchMetrics"],
        json!([{"Namespace": "bootstage", "Dimensions": [["AutoScalingGroupName"]],
                "Metrics": [{"Name": "MetadataDuration", "Unit": "Seconds"},
                            {"Name": "S3SyncDuration", "Unit": "Seconds"},
                            {"Name": "BootFailed", "Unit": "Count"}]}])
    );
    assert_eq!(line["AutoScalingGroupName"], "web");
    assert_eq!(line["BootFailed"], 1);
    assert!(line.get("TimeToReady").is_none());
}

/// A boot whose metadata stage failed has no parameters: the image's report.json says
/// where, and IMDS says who the instance is.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_metadata_stage_is_reported_from_the_images_settings() {
    let logs = moto().bucket("report-forensics-md").await;
    let imds = imds_emulator::Emulator::start(imds_emulator::Config::default())
        .await
        .unwrap();
    let sb = Sandbox::new();
    std::fs::write(
        sb.path("report.json"),
        json!({"logs": "s3://report-forensics-md/{instance_id}/{boot_id}/"}).to_string(),
    )
    .unwrap();
    let mut cmd = sb.command(&[
        "metadata",
        "--imds-endpoint",
        &imds.url(),
        "--user-data-wait",
        "1s",
    ]);
    cmd.envs(moto().env())
        .env("BOOTSTAGE_REPORT_CONFIG", sb.path("report.json"));
    let out = common::run(cmd).await;
    assert_eq!(out.code, 66, "no user-data: {}", out.stderr);
    let mut rig = Rig {
        sb,
        orch: Orchestrator::start(Orch::default()).await.unwrap(),
        journal: out.stderr,
        _imds: imds,
    };
    rig.fake_journal();
    let mut cmd = rig.command(
        &[
            "notify",
            "failure",
            "--unit",
            "bootstage-metadata.service",
            "--journalctl",
            rig.sb.path("journalctl").to_str().unwrap(),
        ],
        &moto().url,
    );
    cmd.env("BOOTSTAGE_REPORT_CONFIG", rig.sb.path("report.json"))
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", rig._imds.url())
        // On EC2 IMDS is there: the SDK's credentials come first from the environment.
        .env_remove("AWS_EC2_METADATA_DISABLED");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = objects(&logs.name, &format!("{INSTANCE}/{}/", boot_id())).await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["journal.log", "records/metadata.json", "status.json"]
    );
    assert_eq!(String::from_utf8_lossy(&got["journal.log"]), rig.journal);
    assert!(rig.journal.contains("no user-data"), "{}", rig.journal);
}
