//! `bootstage.report.tags` and `bootstage fleet` against moto's EC2 (RunInstances,
//! CreateTags, DescribeInstances) on loopback: a boot booted by the real stages (the IMDS
//! emulator describing a moto instance) tags that instance `ready` or `failed`; values
//! that did not change send no CreateTags; `fleet` lists 30 moto instances failures
//! first, as text and as JSON, paging as asked; `--logs` prints a failed boot's forensics.
//! A loopback proxy in front of moto counts each EC2 action (moto's log says only
//! `POST /`); another holds back a `booting` CreateTags (a slow EC2): `ready` lands all
//! the same, a late `booting` is put right, SIGTERM ends the watcher's wait. A fake EC2 on
//! loopback answers pages that go round in a circle, an oversized answer and a hostile
//! error message.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use common::moto::moto;
use common::stamped::{pass, stamped};
use common::{Sandbox, b64};
use serde_json::{Value, json};

/// A proxy in front of moto that holds back each CreateTags of `booting` (`None`: never
/// answers it) and each other CreateTags by `others`; `seen` is told of each `booting`.
struct Slow {
    url: String,
    seen: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Holding = (
    (String, reqwest::Client),
    Option<Duration>,
    Duration,
    Arc<tokio::sync::Notify>,
);

async fn slow(booting: Option<Duration>, others: Duration) -> Slow {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(tokio::sync::Notify::new());
    let shared: Arc<Holding> = Arc::new((
        (
            moto().url.clone(),
            reqwest::Client::builder().no_proxy().build().unwrap(),
        ),
        booting,
        others,
        seen.clone(),
    ));
    let app = axum::Router::new().fallback(hold).with_state(shared);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Slow { url, seen, task }
}

async fn hold(
    State(s): State<Arc<Holding>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = String::from_utf8_lossy(&body).into_owned();
    if form.split('&').any(|kv| kv == "Action=CreateTags") {
        match form.split('&').any(|kv| kv.ends_with("=booting")) {
            true => {
                s.3.notify_one();
                match s.1 {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            }
            false => tokio::time::sleep(s.2).await,
        }
    }
    pass(&s.0.0, &s.0.1, method, &uri, headers, body).await
}

/// One EC2 Query call to moto (which checks no signature), its answer's body.
async fn ec2(params: &[(String, String)]) -> String {
    let mut form = vec![("Version".to_string(), "2016-11-15".to_string())];
    form.extend_from_slice(params);
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&moto().url)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{params:?}: {}",
        answer.status()
    );
    answer.text().await.unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Each `<name>…</name>` in `xml`, in order.
fn values(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .map(|rest| rest.split(&close).next().unwrap().to_string())
        .collect()
}

/// A moto instance in `zone`, tagged `tags` at launch: its id and launch time.
pub(crate) async fn run_instance(zone: &str, tags: &[(&str, &str)]) -> (String, String) {
    let mut params = pairs(&[
        ("Action", "RunInstances"),
        ("ImageId", "ami-12c6146b"),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("Placement.AvailabilityZone", zone),
    ]);
    if !tags.is_empty() {
        params.extend(pairs(&[("TagSpecification.1.ResourceType", "instance")]));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        params.push((
            format!("TagSpecification.1.Tag.{}.Key", i + 1),
            k.to_string(),
        ));
        params.push((
            format!("TagSpecification.1.Tag.{}.Value", i + 1),
            v.to_string(),
        ));
    }
    let xml = ec2(&params).await;
    (
        values(&xml, "instanceId")[0].clone(),
        values(&xml, "launchTime")[0].clone(),
    )
}

/// The instance's tags, as moto keeps them.
pub(crate) async fn tags_of(instance: &str) -> BTreeMap<String, String> {
    let xml = ec2(&pairs(&[
        ("Action", "DescribeTags"),
        ("Filter.1.Name", "resource-id"),
        ("Filter.1.Value.1", instance),
    ]))
    .await;
    values(&xml, "key")
        .into_iter()
        .zip(values(&xml, "value"))
        .collect()
}

/// A booted instance: the metadata stage (IMDS emulator describing the moto instance
/// `id`, launched `pending_ago` ago) and the sync stage with `sync`, then the notices.
struct Booted {
    sb: Sandbox,
    _imds: imds_emulator::Emulator,
}

impl Booted {
    async fn new(id: &str, pending_ago: Duration, sync: Value) -> Booted {
        Booted::with(id, pending_ago, sync, Value::Null).await
    }

    /// With `lifecycle` as `bootstage.lifecycle`.
    async fn with(id: &str, pending_ago: Duration, sync: Value, lifecycle: Value) -> Booted {
        let sb = Sandbox::new();
        let sync = sync
            .to_string()
            .replace("SANDBOX", sb.dir.path().to_str().unwrap());
        let mut params = json!({
            "bootstage": {"report": {"tags": true}, "sync": serde_json::from_str::<Value>(&sync).unwrap()},
        });
        if !lifecycle.is_null() {
            params["bootstage"]["lifecycle"] = lifecycle;
        }
        let pending = SystemTime::now() - pending_ago;
        let imds = imds_emulator::Emulator::start(imds_emulator::Config {
            user_data: Some(b64(&params.to_string()).into()),
            instance: imds_emulator::Instance {
                instance_id: id.into(),
                region: "us-east-1".into(),
                availability_zone: "us-east-1a".into(),
                pending_time: humantime::format_rfc3339_seconds(pending).to_string(),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cmd = sb.command(&["metadata", "--imds-endpoint", &imds.url()]);
        cmd.envs(moto().env());
        let out = common::run(cmd).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        Booted { sb, _imds: imds }
    }

    async fn run(&self, args: &[&str], ec2: &str) -> common::Outcome {
        common::run(self.command(args, ec2)).await
    }

    fn command(&self, args: &[&str], ec2: &str) -> tokio::process::Command {
        let mut cmd = self.sb.command(args);
        cmd.envs(moto().env())
            .env("AWS_ENDPOINT_URL_EC2", ec2)
            .env("BOOTSTAGE_REPORT_CONFIG", self.sb.path("report.json"));
        cmd
    }

    /// `lifecycle watch`, running.
    fn watch(&self, ec2: &str) -> tokio::process::Child {
        self.command(&["lifecycle", "watch"], ec2)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_boot_tags_its_instance_booting_then_ready_once() {
    let bucket = moto().bucket("fleet-ready-release").await;
    bucket.put("conf/app.conf", "port = 8080\n").await;
    let proxy = stamped(&moto().url).await;
    let (id, _) = run_instance(
        "us-east-1a",
        &[("aws:autoscaling:groupName", "fleet-ready")],
    )
    .await;
    let started = std::time::Instant::now();
    let booted = Booted::new(
        &id,
        Duration::from_secs(30),
        json!([{"from": "s3://fleet-ready-release/conf/", "to": "SANDBOX/conf"}]),
    )
    .await;
    // The lifecycle watcher starts after the metadata stage: booting (it has nothing else
    // to watch here, so it ends once the tag is written).
    let out = booted.run(&["lifecycle", "watch"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        tags_of(&id).await,
        [
            (
                "aws:autoscaling:groupName".to_string(),
                "fleet-ready".to_string()
            ),
            ("bootstage:status".to_string(), "booting".to_string()),
        ]
        .into()
    );
    assert_eq!(proxy.count("CreateTags"), 1);
    let out = booted.run(&["s3-sync"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = booted.run(&["notify", "ready"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // pendingTime is written in whole seconds (up to one more), the elapsed time is cut
    // to whole seconds (up to one more) and the ready seconds rounded.
    let waited = started.elapsed().as_secs() + 2;

    // The release: the destination's current version, as its home records it.
    let record: Value = serde_json::from_slice(
        &std::fs::read(booted.sb.path(".conf.bootstage/generations.json")).unwrap(),
    )
    .unwrap();
    let current = std::fs::read_link(booted.sb.path("conf")).unwrap();
    let current = current.file_name().unwrap().to_str().unwrap();
    let version = record["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == current)
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    let short = format!("sha256:{}", &version.strip_prefix("sha256:").unwrap()[..12]);
    let tags = tags_of(&id).await;
    let ready: u64 = tags["bootstage:ready-seconds"].parse().unwrap();
    assert!(
        (30..=30 + waited).contains(&ready),
        "pendingTime was 30 s before the boot: {ready}"
    );
    assert_eq!(
        tags,
        [
            ("aws:autoscaling:groupName", "fleet-ready"),
            ("bootstage:ready-seconds", ready.to_string().as_str()),
            ("bootstage:release", format!("conf={short}").as_str()),
            ("bootstage:status", "ready"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(proxy.count("CreateTags"), 2);

    // The ready notice again (a restarted unit): nothing changed, nothing is sent.
    let out = booted.run(&["notify", "ready"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("the instance's tags are unchanged"),
        "{}",
        out.stderr
    );
    assert_eq!(
        proxy.count("CreateTags"),
        2,
        "no second CreateTags for ready"
    );
    // A restarted watcher does not turn a ready instance back to booting.
    let out = booted.run(&["lifecycle", "watch"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the instance's status stays ready: booting does not replace it"),
        "{}",
        out.stderr
    );
    assert_eq!(proxy.count("CreateTags"), 2);
    assert_eq!(tags_of(&id).await, tags);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_booting_tag_keeps_neither_ready_waiting_nor_the_watcher_past_sigterm() {
    // EC2 never answers booting's CreateTags, and answers ready's a second late.
    let proxy = slow(None, Duration::from_secs(1)).await;
    let (id, _) = run_instance("us-east-1a", &[]).await;
    let booted = Booted::new(&id, Duration::from_secs(30), json!([])).await;
    let watcher = booted.watch(&proxy.url);
    tokio::time::timeout(Duration::from_secs(30), proxy.seen.notified())
        .await
        .expect("the watcher sent booting");
    // Ready while booting is on its way: it does not wait for it (it waited for the
    // record's lock, which booting held over the network, past its own 10 s).
    let out = booted.run(&["notify", "ready"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the instance's tags: bootstage:ready-seconds=")
            && out.stderr.contains(", bootstage:status=ready\n"),
        "{}",
        out.stderr
    );
    let tags = tags_of(&id).await;
    assert_eq!(tags["bootstage:status"], "ready", "{tags:?}");
    assert!(out.elapsed < Duration::from_secs(8), "{:?}", out.elapsed);
    // SIGTERM ends the watcher's wait for booting at once.
    let pid = nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32);
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(stderr.contains("stopping on a signal"), "{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_a_watcher_keeping_a_launch_alive_while_booting_is_on_its_way() {
    let proxy = slow(None, Duration::ZERO).await;
    let (id, _) = run_instance("us-east-1a", &[]).await;
    let orch = lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
        groups: vec![lifecycle_emulator::Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 60.0,
            default_result: "ABANDON".into(),
            instances: vec![id.clone()],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let booted = Booted::with(
        &id,
        Duration::from_secs(5),
        json!([]),
        json!({"asg": {"hook": "launch", "group": "web"}}),
    )
    .await;
    let watcher = booted
        .command(&["lifecycle", "watch"], &proxy.url)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", orch.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), proxy.seen.notified())
        .await
        .expect("the watcher sent booting");
    // The launch is kept alive (its first heartbeat is its own event) while booting waits.
    let pid = nix::unistd::Pid::from_raw(watcher.id().unwrap() as i32);
    let sent = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(stderr.contains("stopping on a signal"), "{stderr}");
    assert!(stderr.contains("stopping the heartbeats"), "{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_booting_tag_that_lands_after_ready_is_put_right() {
    // Booting's CreateTags reaches EC2 two seconds late, after ready's.
    let proxy = slow(Some(Duration::from_secs(2)), Duration::ZERO).await;
    let (id, _) = run_instance("us-east-1a", &[]).await;
    let booted = Booted::new(&id, Duration::from_secs(30), json!([])).await;
    let watcher = booted.watch(&proxy.url);
    tokio::time::timeout(Duration::from_secs(30), proxy.seen.notified())
        .await
        .expect("the watcher sent booting");
    let out = booted.run(&["notify", "ready"], &proxy.url).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert!(watched.status.success(), "{stderr}");
    assert!(
        stderr.contains("the instance's tags: bootstage:status=booting; another write ended meanwhile, so again: bootstage:ready-seconds=")
            && stderr.contains(", bootstage:status=ready\n"),
        "{stderr}"
    );
    let tags = tags_of(&id).await;
    assert_eq!(tags["bootstage:status"], "ready", "{tags:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_boot_tags_its_instance_failed_and_an_unreachable_ec2_holds_nothing() {
    let proxy = stamped(&moto().url).await;
    let (id, _) = run_instance("us-east-1b", &[]).await;
    let booted = Booted::new(
        &id,
        Duration::from_secs(5),
        // The source bucket does not exist: the sync stage fails.
        json!([{"from": "s3://fleet-no-such-bucket/conf/", "to": "SANDBOX/conf"}]),
    )
    .await;
    let out = booted.run(&["s3-sync"], &proxy.url).await;
    assert_ne!(out.code, 0, "the sync was meant to fail");
    let out = booted
        .run(
            &["notify", "failure", "--unit", "bootstage-s3-sync.service"],
            &proxy.url,
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        tags_of(&id).await,
        [("bootstage:status".to_string(), "failed".to_string())].into()
    );
    assert_eq!(proxy.count("CreateTags"), 1);

    // EC2 unreachable (a closed port): logged, and the notice is done within the bound.
    std::fs::remove_file(booted.sb.state().join("report/tags.json")).unwrap();
    let out = booted
        .run(
            &["notify", "failure", "--unit", "bootstage-s3-sync.service"],
            "http://127.0.0.1:9",
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the instance's status tag (failed) was not written"),
        "{}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(12), "{:?}", out.elapsed);
}

/// A boot whose metadata stage failed has no instance.json: IMDS says who the instance
/// is, and the image's report.json that tags are on; it is tagged failed, so `fleet`
/// lists it.
#[tokio::test(flavor = "multi_thread")]
async fn a_boot_whose_metadata_stage_failed_is_tagged_failed_all_the_same() {
    let proxy = stamped(&moto().url).await;
    let (id, _) = run_instance("us-east-1a", &[]).await;
    let imds = imds_emulator::Emulator::start(imds_emulator::Config {
        instance: imds_emulator::Instance {
            instance_id: id.clone(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    std::fs::write(sb.path("report.json"), json!({"tags": true}).to_string()).unwrap();
    let mut cmd = sb.command(&[
        "metadata",
        "--imds-endpoint",
        &imds.url(),
        "--user-data-wait",
        "1s",
    ]);
    cmd.envs(moto().env());
    let out = common::run(cmd).await;
    assert_eq!(out.code, 66, "no user-data: {}", out.stderr);
    assert!(!sb.state().join("instance.json").exists());
    let mut cmd = sb.command(&["notify", "failure", "--unit", "bootstage-metadata.service"]);
    cmd.envs(moto().env())
        .env("AWS_ENDPOINT_URL_EC2", &proxy.url)
        .env("BOOTSTAGE_REPORT_CONFIG", sb.path("report.json"))
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())
        .env_remove("AWS_EC2_METADATA_DISABLED");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        tags_of(&id).await,
        [("bootstage:status".to_string(), "failed".to_string())].into(),
        "{}",
        out.stderr
    );
    assert_eq!(proxy.count("CreateTags"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_boot_on_hold_tags_its_instance_held() {
    let proxy = stamped(&moto().url).await;
    let (id, _) = run_instance("us-east-1a", &[]).await;
    let orch = lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
        groups: vec![lifecycle_emulator::Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 60.0,
            default_result: "ABANDON".into(),
            instances: vec![id.clone()],
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let booted = Booted::with(
        &id,
        Duration::from_secs(5),
        json!([{"from": "s3://fleet-no-such-bucket/conf/", "to": "SANDBOX/conf"}]),
        json!({"asg": {"hook": "launch", "group": "web", "on_failure": "hold"}}),
    )
    .await;
    let out = booted.run(&["s3-sync"], &proxy.url).await;
    assert_ne!(out.code, 0, "the sync was meant to fail");
    let mut cmd = booted
        .sb
        .command(&["notify", "failure", "--unit", "bootstage-s3-sync.service"]);
    cmd.envs(moto().env())
        .env("AWS_ENDPOINT_URL_EC2", &proxy.url)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", orch.url());
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("holding this failed instance"),
        "{}",
        out.stderr
    );
    assert_eq!(
        tags_of(&id).await,
        [("bootstage:status".to_string(), "held".to_string())].into()
    );
}

/// An instance of the plan: its zone, status, release and ready seconds.
type Planned = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<u64>,
);

/// The 30 instances of one group: their status, release and ready seconds tags.
fn fleet_plan() -> Vec<Planned> {
    let mut plan = Vec::new();
    for i in 0..30u64 {
        let (status, release, ready) = match i {
            0..=3 => (Some("failed"), Some("conf=bbbbbbbbbbbb"), None),
            4..=5 => (Some("held"), Some("conf=bbbbbbbbbbbb"), None),
            6..=8 => (Some("booting"), None, None),
            9 => (Some("draining"), Some("conf=aaaaaaaaaaaa"), Some(50)),
            10..=11 => (None, None, None),
            _ => (Some("ready"), Some("conf=aaaaaaaaaaaa"), Some(20 + i)),
        };
        let zone = if i % 2 == 0 {
            "us-east-1a"
        } else {
            "us-east-1b"
        };
        plan.push((zone, status, release, ready));
    }
    plan
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_lists_thirty_instances_failures_first_in_pages() {
    let group = "fleet-web";
    let mut launched = Vec::new();
    for (zone, status, release, ready) in fleet_plan() {
        let mut tags = vec![("aws:autoscaling:groupName", group.to_string())];
        if let Some(s) = status {
            tags.push(("bootstage:status", s.into()));
        }
        if let Some(r) = release {
            tags.push(("bootstage:release", r.into()));
        }
        if let Some(r) = ready {
            tags.push(("bootstage:ready-seconds", r.to_string()));
        }
        let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (id, at) = run_instance(zone, &tags).await;
        launched.push((id, at, zone, status, release, ready));
    }
    // Another group's instance is not listed.
    run_instance(
        "us-east-1a",
        &[
            ("aws:autoscaling:groupName", "fleet-other"),
            ("bootstage:status", "failed"),
        ],
    )
    .await;

    // The expected order: failed, held, booting, draining, untagged, ready; then the
    // launch time and the id.
    let rank = |s: Option<&str>| match s {
        Some("failed") => 0,
        Some("held") => 1,
        Some("booting") => 2,
        Some("draining") => 3,
        None => 4,
        _ => 5,
    };
    let mut expected = launched.clone();
    expected.sort_by(|a, b| (rank(a.3), &a.1, &a.0).cmp(&(rank(b.3), &b.1, &b.0)));

    let proxy = stamped(&moto().url).await;
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["fleet", "--group", group, "--page-size", "5"]);
    cmd.envs(moto().env())
        .env("AWS_ENDPOINT_URL_EC2", &proxy.url);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // 30 instances, 5 a page: six calls (moto pages by reservation, one instance each
    // here); at the default 1,000 a page, 1,000 instances are one call.
    assert_eq!(proxy.count("DescribeInstances"), 6);

    let mut text = format!(
        "{:<19}  {:<9}  {:<10}  {:<7}  {:<8}  {:<17}  {:<5}  LAUNCHED\n",
        "INSTANCE", "GROUP", "AZ", "STATE", "STATUS", "RELEASE", "READY"
    );
    for (id, at, zone, status, release, ready) in &expected {
        text += &format!(
            "{id:<19}  {group:<9}  {zone:<10}  {:<7}  {:<8}  {:<17}  {:<5}  {at}\n",
            "running",
            status.unwrap_or("-"),
            release.unwrap_or("-"),
            ready.map_or("-".to_string(), |r| format!("{r}s")),
        );
    }
    // Ready seconds 50 and 32..=49: 19 values, the median (10th) is 41.
    let off: Vec<&String> = expected
        .iter()
        .filter(|e| e.4 == Some("conf=bbbbbbbbbbbb"))
        .map(|e| &e.0)
        .collect();
    text += "30 instances: 4 failed, 2 held, 3 booting, 1 draining, 2 untagged, 18 ready; ready p50 41s, max 50s; 6 not on the majority release conf=aaaaaaaaaaaa\n";
    assert_eq!(out.stdout, text);

    let mut cmd = sb.command(&["fleet", "--group", group, "--json"]);
    cmd.envs(moto().env());
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let instances: Vec<Value> = expected
        .iter()
        .map(|(id, at, zone, status, release, ready)| {
            json!({
                "id": id,
                "group": group,
                "availability_zone": zone,
                "state": "running",
                "status": status,
                "release": release,
                "ready_seconds": ready,
                "launch_time": at,
            })
        })
        .collect();
    let doc = json!({
        "instances": instances,
        "summary": {
            "instances": 30,
            "statuses": {"failed": 4, "held": 2, "booting": 3, "draining": 1, "untagged": 2, "ready": 18},
            "ready_seconds": {"p50": 41, "max": 50},
            "majority_release": "conf=aaaaaaaaaaaa",
            "off_majority": off,
        },
    });
    assert_eq!(
        out.stdout,
        serde_json::to_string_pretty(&doc).unwrap() + "\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_logs_prints_the_last_failed_boots_forensics() {
    let bucket = moto().bucket("fleet-forensics").await;
    let id = "i-0fa11ed0000000001";
    // An older boot, then the last one; another instance's beside them.
    bucket
        .put(&format!("boot-logs/{id}/aaaa/journal.log"), "old boot\n")
        .await;
    // S3 keeps LastModified in whole seconds: the last boot's objects are a second later
    // (as a reboot's are minutes later).
    let second = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let now = second(SystemTime::now());
    while second(SystemTime::now()) == now {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bucket
        .put(
            &format!("boot-logs/{id}/bbbb/journal.log"),
            "the sync failed\n",
        )
        .await;
    bucket
        .put(
            &format!("boot-logs/{id}/bbbb/status.json"),
            "{\"state\": \"failed\"}",
        )
        .await;
    bucket
        .put(
            "boot-logs/i-0fa11ed0000000002/cccc/journal.log",
            "not this one\n",
        )
        .await;
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["fleet", "--logs", id]);
    cmd.envs(moto().env()).env(
        "BOOTSTAGE_LOGS_PREFIX",
        "s3://fleet-forensics/boot-logs/{instance_id}/{boot_id}/",
    );
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "==> s3://fleet-forensics/boot-logs/{id}/bbbb/journal.log <==\nthe sync failed\n\
             ==> s3://fleet-forensics/boot-logs/{id}/bbbb/status.json <==\n{{\"state\": \"failed\"}}\n"
        )
    );

    // None for an instance, or no prefix: said, with the exit code.
    let out = common::run({
        let mut cmd = sb.command(&["fleet", "--logs", "i-0fa11ed0000000009"]);
        cmd.envs(moto().env()).env(
            "BOOTSTAGE_LOGS_PREFIX",
            "s3://fleet-forensics/boot-logs/{instance_id}/{boot_id}/",
        );
        cmd
    })
    .await;
    common::assert_exit(
        &out,
        66,
        "no forensics of i-0fa11ed0000000009 under s3://fleet-forensics/boot-logs/i-0fa11ed0000000009/",
    );
    let out = sb.run(&["fleet", "--logs", id]).await;
    common::assert_exit(&out, 64, "--logs needs the forensics' prefix");

    // Keys and bodies are anyone's with PutObject under the prefix: shown escaped.
    bucket
        .put(
            &format!("boot-logs/{id}/bbbb/z\u{202e}gol.txt"),
            "a\u{1b}]0;owned\u{7}b\u{200b}\n",
        )
        .await;
    let mut cmd = sb.command(&["fleet", "--logs", id]);
    cmd.envs(moto().env()).env(
        "BOOTSTAGE_LOGS_PREFIX",
        "s3://fleet-forensics/boot-logs/{instance_id}/{boot_id}/",
    );
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.ends_with(&format!(
            "==> s3://fleet-forensics/boot-logs/{id}/bbbb/z\\u{{202e}}gol.txt <==\na\\u{{1b}}]0;owned\\u{{7}}b\\u{{200b}}\n"
        )),
        "{}",
        out.stdout
    );
}

/// What the fake EC2 was asked: each request's `Host` and form.
type Asked = Arc<Mutex<Vec<(String, String)>>>;

/// A fake EC2 on loopback whose answer the group's name (the filter's value) chooses:
/// `repeat` pages a, a; `circle` a, b, a; `huge` a 500 of 100 KiB; `said` a 400 whose
/// message is long and hostile.
async fn fake_ec2(State(asked): State<Asked>, headers: HeaderMap, body: Bytes) -> Response {
    let form = String::from_utf8_lossy(&body).into_owned();
    let host = headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_string())
        .unwrap_or_default();
    asked.lock().unwrap().push((host, form.clone()));
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let page = |id: &str, next: &str| {
        format!(
            "<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>{id}</instanceId><instanceState><name>running</name></instanceState></item></instancesSet></item></reservationSet><nextToken>{next}</nextToken></DescribeInstancesResponse>"
        )
    };
    let answer = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Body::from(body))
            .unwrap()
    };
    let token = field("NextToken");
    match (field("Filter.1.Value.1").as_deref(), token.as_deref()) {
        (Some("repeat"), None) => answer(200, page("i-1", "a")),
        (Some("repeat"), Some(_)) => answer(200, page("i-2", "a")),
        (Some("circle"), None) => answer(200, page("i-1", "a")),
        (Some("circle"), Some("a")) => answer(200, page("i-2", "b")),
        (Some("circle"), Some(_)) => answer(200, page("i-3", "a")),
        (Some("huge"), _) => answer(500, "x".repeat(100 * 1024)),
        _ => answer(
            400,
            format!(
                "<Response><Errors><Error><Code>InvalidParameterValue</Code><Message>bad\u{202e}\nvalue {}</Message></Error></Errors></Response>",
                "y".repeat(1000)
            ),
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_refuses_pages_that_go_round_answers_too_large_and_says_messages_safely() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked: Asked = Arc::default();
    let app = axum::Router::new()
        .fallback(fake_ec2)
        .with_state(asked.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let sb = Sandbox::new();
    // (group, exit code, what is said, requests)
    let cases = [
        (
            "repeat",
            1,
            "ec2:DescribeInstances: page 2 named a next page asked for before: the pages go round in a circle".to_string(),
            2,
        ),
        (
            "circle",
            1,
            "ec2:DescribeInstances: page 3 named a next page asked for before: the pages go round in a circle".to_string(),
            3,
        ),
        (
            "huge",
            1,
            "ec2:DescribeInstances: an answer larger than 65536 bytes (HTTP 500)".to_string(),
            1,
        ),
        (
            "said",
            1,
            format!(
                "ec2:DescribeInstances: InvalidParameterValue: bad\\u{{202e}}\\u{{a}}value {}…\n",
                "y".repeat(300 - "bad\\u{202e}\\u{a}value ".len())
            ),
            1,
        ),
    ];
    for (group, code, said, requests) in cases {
        asked.lock().unwrap().clear();
        let mut cmd = sb.command(&["fleet", "--group", group, "--timeout", "5s"]);
        // A user and password in the endpoint go nowhere near the Host header.
        cmd.envs(moto().env())
            .env("AWS_ENDPOINT_URL_EC2", format!("http://user:secret@{addr}"));
        let out = common::run(cmd).await;
        common::assert_exit(&out, code, &said);
        assert_eq!(
            out.stderr.matches("ec2:DescribeInstances").count(),
            1,
            "{}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{group}");
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.len(), requests, "{group}: {asked:?}");
        for (host, _) in &asked {
            assert_eq!(host, &addr.to_string());
        }
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_with_ec2_unreachable_says_so_within_its_timeout() {
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["fleet", "--group", "web", "--timeout", "2s"]);
    cmd.envs(moto().env())
        .env("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:9");
    let out = common::run(cmd).await;
    common::assert_exit(&out, 75, "ec2:DescribeInstances: cannot reach EC2: ");
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    assert_eq!(out.stdout, "");
}
