//! The settable meta-data paths (an instance's life after boot) over real HTTP on loopback:
//! each answers 404 (`[]` for maintenance) until its timeline change or a control request
//! sets it, and every change is logged.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imds_emulator::{Change, Config, Emulator, SETTABLE_PATHS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATE: &str = "autoscaling/target-lifecycle-state";
const SPOT: &str = "spot/instance-action";
const REBALANCE: &str = "events/recommendations/rebalance";
const SCHEDULED: &str = "events/maintenance/scheduled";

const SPOT_VALUE: &str = r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#;
const REBALANCE_VALUE: &str = r#"{"noticeTime": "2020-10-27T08:22:00Z"}"#;
const SCHEDULED_VALUE: &str = r#"[{"Code": "system-reboot", "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32", "NotBefore": "21 Jan 2019 09:00:43 GMT", "NotAfter": "21 Jan 2019 09:17:23 GMT", "NotBeforeDeadline": "24 Jan 2019 09:00:43 GMT", "State": "active"}]"#;

/// One HTTP/1.1 request on a fresh connection: the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    assert!(addr.ip().is_loopback());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

async fn get(emu: &Emulator, path: &str) -> (u16, String) {
    http(emu.addr(), "GET", &format!("/latest/meta-data/{path}"), "").await
}

/// What the four paths answer now, in `SETTABLE_PATHS` order.
async fn answers(emu: &Emulator) -> Vec<(u16, String)> {
    let mut all = Vec::new();
    for path in SETTABLE_PATHS {
        all.push(get(emu, path).await);
    }
    all
}

fn none_set() -> Vec<(u16, String)> {
    vec![
        (404, String::new()),
        (404, String::new()),
        (404, String::new()),
        (200, "[]".into()),
    ]
}

fn all_set(state: &str) -> Vec<(u16, String)> {
    vec![
        (200, state.into()),
        (200, SPOT_VALUE.into()),
        (200, REBALANCE_VALUE.into()),
        (200, SCHEDULED_VALUE.into()),
    ]
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn change(after: &str, path: &str, value: Option<&str>) -> Change {
    Change {
        after: humantime::parse_duration(after).unwrap(),
        path: path.into(),
        value: value.map(str::to_string),
    }
}

#[tokio::test]
async fn timeline_sets_each_path_then_clears_it() {
    let started = unix_now();
    let emu = Emulator::start(Config {
        timeline: vec![
            // Out of order on purpose: the emulator applies them by time.
            change("2s", STATE, None),
            change("2s", SPOT, None),
            change("2s", REBALANCE, None),
            change("2s", SCHEDULED, None),
            change("1s", STATE, Some("Warmed:Stopped")),
            change("1s", SPOT, Some(SPOT_VALUE)),
            change("1s", REBALANCE, Some(REBALANCE_VALUE)),
            change("1s", SCHEDULED, Some(SCHEDULED_VALUE)),
        ],
        ..Config::default()
    })
    .await
    .unwrap();

    assert_eq!(answers(&emu).await, none_set());
    let (_, index) = get(&emu, "").await;
    assert_eq!(
        index.lines().collect::<Vec<_>>(),
        [
            "ami-id",
            "events/",
            "instance-id",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "mac",
            "placement/",
            "tags/"
        ]
    );
    assert_eq!(get(&emu, "autoscaling/").await.0, 404);
    assert_eq!(get(&emu, "spot/").await.0, 404);
    assert_eq!(get(&emu, "events/").await, (200, "maintenance/".into()));
    assert!(emu.changes().is_empty());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(answers(&emu).await, all_set("Warmed:Stopped"));
    let (_, index) = get(&emu, "").await;
    for item in ["autoscaling/", "events/", "spot/", "instance-id", "tags/"] {
        assert!(index.lines().any(|l| l == item), "{item} in {index}");
    }
    assert_eq!(
        get(&emu, "autoscaling/").await,
        (200, "target-lifecycle-state".into())
    );
    assert_eq!(get(&emu, "spot/").await, (200, "instance-action".into()));
    assert_eq!(
        get(&emu, "events/").await,
        (200, "maintenance/\nrecommendations/".into())
    );
    assert_eq!(
        get(&emu, "events/recommendations/").await,
        (200, "rebalance".into())
    );
    assert_eq!(
        get(&emu, "events/maintenance/").await,
        (200, "history\nscheduled".into())
    );

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(answers(&emu).await, none_set());

    let changes = emu.changes();
    assert_eq!(changes.len(), 8, "{changes:#?}");
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c.by, "timeline");
        assert_eq!(c.path, SETTABLE_PATHS[i % 4]);
        assert_eq!(c.value.is_some(), i < 4);
        let after = Duration::from_secs(1 + i as u64 / 4);
        assert!(c.at >= after, "{c:?}");
        assert!(c.at < after + Duration::from_millis(500), "{c:?}");
        let since = c.unix - started;
        assert!((0.9..3.0).contains(&since), "{c:?} vs {started}");
    }
    assert_eq!(changes[0].value.as_deref(), Some("Warmed:Stopped"));
    assert_eq!(changes[1].value.as_deref(), Some(SPOT_VALUE));

    // The same log over HTTP.
    let (status, body) = http(emu.addr(), "GET", "/_emulator/changes", "").await;
    assert_eq!(status, 200);
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(log.as_array().unwrap().len(), 8);
    assert_eq!(log[0]["path"], STATE);
    assert_eq!(log[0]["value"], "Warmed:Stopped");
    assert_eq!(log[4]["value"], serde_json::Value::Null);
    assert!(log[0]["at"].as_f64().unwrap() >= 1.0);
    assert!(log[0]["unix"].as_f64().unwrap() >= started);
    // Control requests are not recorded as IMDS requests.
    assert!(
        emu.requests()
            .iter()
            .all(|r| !r.path.starts_with("/_emulator"))
    );
}

#[tokio::test]
async fn control_requests_set_and_clear_each_path() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let values = ["InService", SPOT_VALUE, REBALANCE_VALUE, SCHEDULED_VALUE];
    for (path, value) in SETTABLE_PATHS.iter().zip(values) {
        let url = format!("/_emulator/meta-data/{path}");
        assert_eq!(http(emu.addr(), "PUT", &url, value).await.0, 204);
    }
    assert_eq!(answers(&emu).await, all_set("InService"));
    for path in SETTABLE_PATHS {
        let url = format!("/_emulator/meta-data/{path}");
        assert_eq!(http(emu.addr(), "DELETE", &url, "").await.0, 204);
    }
    assert_eq!(answers(&emu).await, none_set());

    // Only the four are settable.
    let (status, why) = http(emu.addr(), "PUT", "/_emulator/meta-data/instance-id", "i-1").await;
    assert_eq!(status, 404);
    assert!(why.contains("not a settable meta-data path"), "{why}");
    assert_eq!(
        get(&emu, "instance-id").await,
        (200, "i-0123456789abcdef0".into())
    );

    let changes = emu.changes();
    assert_eq!(changes.len(), 8);
    assert!(changes.iter().all(|c| c.by == "control"));
    assert!(changes.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(changes[3].value.as_deref(), Some(SCHEDULED_VALUE));
    assert_eq!(changes[7].path, SCHEDULED);
    assert_eq!(changes[7].value, None);
}

#[tokio::test]
async fn the_api_sets_paths_and_logs_updates() {
    let emu = Emulator::start(Config {
        target_lifecycle_state: Some("Warmed:Running".into()),
        ..Config::default()
    })
    .await
    .unwrap();
    assert_eq!(get(&emu, STATE).await, (200, "Warmed:Running".into()));

    emu.set_meta_data(STATE, Some("InService"));
    emu.set_meta_data("/spot/instance-action", Some(SPOT_VALUE));
    assert_eq!(get(&emu, STATE).await, (200, "InService".into()));
    assert_eq!(get(&emu, SPOT).await, (200, SPOT_VALUE.into()));
    emu.set_meta_data(SPOT, None);
    assert_eq!(get(&emu, SPOT).await.0, 404);

    // `update` logs what it changed among the four, and only that.
    emu.update(|c| {
        c.rebalance = Some(REBALANCE_VALUE.into());
        c.v2_only = false;
    });
    assert_eq!(get(&emu, REBALANCE).await, (200, REBALANCE_VALUE.into()));

    let changes: Vec<_> = emu
        .changes()
        .into_iter()
        .map(|c| (c.path, c.value, c.by))
        .collect();
    let expected = [
        (STATE, Some("InService"), "api"),
        (SPOT, Some(SPOT_VALUE), "api"),
        (SPOT, None, "api"),
        (REBALANCE, Some(REBALANCE_VALUE), "api"),
    ]
    .map(|(p, v, by)| (p.to_string(), v.map(str::to_string), by.to_string()));
    assert_eq!(changes, expected);
}

#[tokio::test]
#[should_panic(expected = "not a settable meta-data path")]
async fn the_api_refuses_other_paths() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    emu.set_meta_data("instance-id", Some("i-1"));
}

#[tokio::test]
async fn a_timeline_with_another_path_is_a_config_error() {
    for path in ["instance-id", "spot/termination-time", "autoscaling"] {
        let config = Config {
            timeline: vec![change("1s", path, Some("x"))],
            ..Config::default()
        };
        let error = Emulator::start(config.clone()).await.err().unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains(path), "{error}");
        let later = Emulator::start_later(config, Duration::from_millis(10)).await;
        assert!(later.is_err());
    }
}

/// The binary's `--config`: durations as humantime strings, `value` optional.
#[tokio::test]
async fn a_json_scenario_loads() {
    let config: Config = serde_json::from_str(
        r#"{
            "target_lifecycle_state": "Warmed:Hibernated",
            "spot_instance_action": null,
            "rebalance": "{\"noticeTime\": \"2020-10-27T08:22:00Z\"}",
            "timeline": [
                {"after": "1500ms", "path": "autoscaling/target-lifecycle-state", "value": "InService"},
                {"after": "1m 30s", "path": "events/maintenance/scheduled"}
            ]
        }"#,
    )
    .unwrap();
    assert_eq!(
        config.timeline,
        [
            change("1500ms", STATE, Some("InService")),
            change("90s", SCHEDULED, None)
        ]
    );
    assert_eq!(config.rebalance.as_deref(), Some(REBALANCE_VALUE));
    let unknown = serde_json::from_str::<Config>(
        r#"{"timeline": [{"after": "1s", "path": "spot/instance-action", "when": 3}]}"#,
    );
    assert!(unknown.is_err());
    let emu = Emulator::start(config).await.unwrap();
    assert_eq!(get(&emu, STATE).await, (200, "Warmed:Hibernated".into()));
}

/// The binary serves a `--config` scenario with a timeline, and refuses a bad path.
#[tokio::test]
async fn the_binary_serves_a_timeline() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("imds-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"timeline": [{"after": "300ms", "path": "spot/instance-action",
            "value": "{\"action\": \"stop\", \"time\": \"2017-09-18T08:22:00Z\"}"}]}"#,
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imds-emulator"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&good)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let path = format!("/latest/meta-data/{SPOT}");
    assert_eq!(http(addr, "GET", &path, "").await.0, 404);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = http(addr, "GET", &path, "").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"action": "stop", "time": "2017-09-18T08:22:00Z"}"#)
    );

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"timeline": [{"after": "1s", "path": "instance-id", "value": "i-1"}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imds-emulator"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a settable meta-data path"), "{stderr}");
}
