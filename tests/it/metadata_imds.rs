//! The metadata stage against the IMDS emulator over real HTTP on 127.0.0.1: each scenario
//! asserts the exit code, what was written or left untouched, and that it ended in bound.
//!
//! Time: a lower bound (the run waited what the scenario makes it wait) is exact, since load
//! only lengthens a run. An upper bound is either read off the emulator's own clock (the
//! gaps between requests it saw) or given [`HEADROOM`], and each one says which wrong
//! behaviour would take longer.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Sandbox, b64};
use imds_emulator::{Config, Emulator, TokenMode};

const PARAMS: &str =
    r#"{"app":{"name":"web","port":8080},"secret":"hunter2","bootstage":{"sync":[]}}"#;

fn with_user_data(config: Config) -> Config {
    Config {
        user_data: Some(b64(PARAMS).into()),
        ..config
    }
}

fn assert_written(sb: &Sandbox) {
    let params: serde_json::Value =
        serde_json::from_str(&sb.read("params.json").expect("params.json")).unwrap();
    assert_eq!(
        params,
        serde_json::from_str::<serde_json::Value>(PARAMS).unwrap()
    );
    let env = sb.read("params.env").expect("params.env");
    assert!(env.contains("APP_PORT=\"8080\"\n"), "{env}");
    assert!(
        env.contains("BOOTSTAGE_INSTANCE_ID=\"i-0123456789abcdef0\"\n"),
        "{env}"
    );
}

/// A previous boot's files, which a failed run must leave exactly as they are.
fn seed_previous(sb: &Sandbox) {
    sb.seed("params.json", "old json");
    sb.seed("params.env", "OLD=\"1\"\n");
    sb.seed("instance.json", "old facts");
}

fn assert_previous_untouched(sb: &Sandbox) {
    assert_eq!(sb.read("params.json").as_deref(), Some("old json"));
    assert_eq!(sb.read("params.env").as_deref(), Some("OLD=\"1\"\n"));
    assert_eq!(sb.read("instance.json").as_deref(), Some("old facts"));
    let names = |dir: std::path::PathBuf| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(sb.state()),
        [
            ".lock",
            "instance.json",
            "params.env",
            "params.json",
            "status"
        ],
        "only the three files, the lock and the status records: no temporary file"
    );
    assert_eq!(names(sb.state().join("status")), ["metadata.json"]);
}

/// What a run may take beyond what its scenario makes it wait: starting a debug binary and
/// a few dozen loopback requests take well under 0.5 s on 2 idle cores, so 5 s is ten times
/// that, enough for a 2-core machine under full load. Every upper bound built on it rules
/// out a run that waits for its 10 s deadline (`Sandbox::metadata`'s `--timeout`) or longer.
const HEADROOM: Duration = Duration::from_secs(5);

/// The run waited at least `min` (what the scenario makes it wait) and ended within
/// [`HEADROOM`] of it, well before its 10 s deadline.
#[track_caller]
fn assert_took(out: &common::Outcome, min: Duration) {
    assert!(
        out.elapsed >= min && out.elapsed < min + HEADROOM,
        "took {:?}, expected {min:?} to {:?}",
        out.elapsed,
        min + HEADROOM
    );
}

fn count(emu: &Emulator, method: &str, path: &str) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// User-data appears 3 s after the emulator starts. Read off the emulator's clock: the
/// polls come at most 250 ms apart on average (`retry::POLL` sleeps 40–80 ms; the failure
/// backoff, 100 ms doubling to 1 s, cannot average under 400 ms over this wait), the one that
/// finds it comes within 1 s of its appearing (one poll: 40–80 ms), and there are at most
/// 80 of them (POLL never sleeps under 40 ms once warmed up: at most ~25 a second; load
/// only makes fewer).
#[tokio::test(flavor = "multi_thread")]
async fn user_data_that_appears_late_is_picked_up_promptly() {
    let appears = Duration::from_secs(3);
    let emu = Emulator::start(with_user_data(Config {
        user_data_after: Some(appears),
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert_took(&out, appears);
    let polls: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/latest/user-data")
        .collect();
    let found = polls.last().expect("user-data was polled");
    assert_eq!(found.status, Some(200), "{polls:?}");
    assert!(
        polls[..polls.len() - 1]
            .iter()
            .all(|r| r.status == Some(404) && r.at < appears),
        "{polls:?}"
    );
    let mean_gap = (found.at - polls[0].at) / (polls.len() as u32 - 1).max(1);
    assert!(
        mean_gap < Duration::from_millis(250),
        "{} polls {mean_gap:?} apart on average",
        polls.len()
    );
    assert!(
        found.at - appears < Duration::from_secs(1),
        "found {:?} after it appeared",
        found.at - appears
    );
    assert!(polls.len() <= 80, "{} polls", polls.len());
    assert_eq!(
        count(&emu, "PUT", "/latest/api/token"),
        1,
        "one token for the whole run"
    );
    assert!(
        emu.requests()
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.had_token)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_user_data_is_final_after_the_grace_period() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let sb = Sandbox::new();
    seed_previous(&sb);
    let out = sb.metadata(&emu.url(), &["--user-data-wait", "1s"]).await;
    common::assert_exit(&out, 66, "this instance has no user-data");
    assert_took(&out, Duration::from_secs(1));
    assert_previous_untouched(&sb);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_empty_boots_with_facts_only() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--user-data-wait", "300ms", "--allow-empty"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sb.read("params.json").unwrap(), "{}\n");
    let env = sb.read("params.env").unwrap();
    assert_eq!(env.lines().count(), 9, "{env}");
    assert!(env.lines().all(|l| l.starts_with("BOOTSTAGE_")), "{env}");
}

#[tokio::test(flavor = "multi_thread")]
async fn imds_disabled_fails_fast_and_keeps_the_previous_files() {
    let emu = Emulator::start(with_user_data(Config {
        token: TokenMode::Forbidden,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    seed_previous(&sb);
    let out = sb.metadata(&emu.url(), &[]).await;
    common::assert_exit(&out, 69, "IMDS is disabled");
    // Fast: one PUT (below); retrying the 403 would run to the 10 s deadline.
    assert_took(&out, Duration::ZERO);
    assert_eq!(
        count(&emu, "PUT", "/latest/api/token"),
        1,
        "403 is not retried"
    );
    assert_previous_untouched(&sb);
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_only_endpoints_fall_back_unless_v2_is_required() {
    for mode in [TokenMode::NotFound, TokenMode::MethodNotAllowed] {
        let emu = Emulator::start(with_user_data(Config {
            token: mode,
            ..Config::default()
        }))
        .await
        .unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&emu.url(), &[]).await;
        assert_eq!(out.code, 0, "{mode:?}: {}", out.stderr);
        assert_written(&sb);
        assert!(
            emu.requests()
                .iter()
                .filter(|r| r.method == "GET")
                .all(|r| !r.had_token)
        );
        assert!(
            out.stderr.contains("falling back to IMDSv1"),
            "{}",
            out.stderr
        );

        let sb = Sandbox::new();
        let out = sb.metadata(&emu.url(), &["--imds-v2-only"]).await;
        assert_eq!(out.code, 69, "{mode:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("--imds-v2-only forbids IMDSv1"),
            "{}",
            out.stderr
        );
        assert_eq!(sb.read("params.json"), None);
    }
}

/// one token request that never answers no longer fails the boot.
#[tokio::test(flavor = "multi_thread")]
async fn one_hung_token_request_is_retried() {
    let emu = Emulator::start(with_user_data(Config {
        hang_token_first: 1,
        v2_only: true,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(
            &emu.url(),
            &["--request-timeout", "400ms", "--imds-v2-only"],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert_eq!(count(&emu, "PUT", "/latest/api/token"), 2);
}

/// Token requests that keep timing out while plain GETs answer: the hop limit. IMDSv1 with
/// a warning that names it, or with --imds-v2-only a failure that does.
#[tokio::test(flavor = "multi_thread")]
async fn token_requests_that_keep_hanging_are_the_hop_limit() {
    let emu = Emulator::start(with_user_data(Config {
        token: TokenMode::Hang,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--request-timeout", "400ms"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert!(
        out.stderr
            .contains("metadata hop limit is probably too low for this container or network namespace (raise HttpPutResponseHopLimit to 2); falling back to IMDSv1"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&emu, "PUT", "/latest/api/token"), 3);

    let emu = Emulator::start(with_user_data(Config {
        token: TokenMode::Hang,
        v2_only: true,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(
            &emu.url(),
            &["--request-timeout", "400ms", "--imds-v2-only"],
        )
        .await;
    common::assert_exit(
        &out,
        75,
        "(IMDSv2 hop limit? raise HttpPutResponseHopLimit to 2)",
    );
    assert_eq!(count(&emu, "PUT", "/latest/api/token"), 3);
    // Three PUTs of 400 ms each, then the end, not the 10 s deadline.
    assert_took(&out, Duration::from_millis(1200));
    assert_eq!(sb.read("params.json"), None);
}

/// a Retry-After of u64::MAX seconds panicked (Instant overflow); every wait is
/// clamped to the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_retry_after_is_clamped_to_the_deadline() {
    let emu = Emulator::start(with_user_data(Config {
        unavailable_first: 1_000,
        retry_after: Some(u64::MAX),
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--timeout", "2s", "--user-data-wait", "1s"])
        .await;
    common::assert_exit(&out, 75, "HTTP 503");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // A wait past the deadline is not begun: it gives up at once, not after u64::MAX
    // seconds (the harness's 60 s bound).
    assert_took(&out, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_only_endpoints_get_a_token_on_every_get() {
    let emu = Emulator::start(with_user_data(Config {
        v2_only: true,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &["--imds-v2-only"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert!(
        emu.requests()
            .iter()
            // Tags and the target lifecycle state are optional: 404 outside a group.
            .all(|r| r.status == Some(200)
                || r.path.contains("tags")
                || r.path.ends_with("autoscaling/target-lifecycle-state")),
        "{:?}",
        emu.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_expires_mid_run_is_replaced() {
    let emu = Emulator::start(with_user_data(Config {
        max_token_ttl: Some(Duration::from_millis(300)),
        user_data_after: Some(Duration::from_millis(1000)),
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    let rejected = emu
        .requests()
        .iter()
        .filter(|r| r.status == Some(401))
        .count();
    let tokens = count(&emu, "PUT", "/latest/api/token");
    assert!(rejected >= 1, "some GET met an expired token");
    assert!(
        tokens >= 2 && tokens <= rejected + 1,
        "{tokens} tokens for {rejected} rejections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_honours_retry_after() {
    let emu = Emulator::start(with_user_data(Config {
        unavailable_first: 3,
        retry_after: Some(1),
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    let log = emu.requests();
    let first_503 = log.iter().find(|r| r.status == Some(503)).unwrap().at;
    let first_ok = log.iter().find(|r| r.status != Some(503)).unwrap().at;
    assert!(
        first_ok - first_503 >= Duration::from_secs(1),
        "waited {:?}",
        first_ok - first_503
    );
    assert_took(&out, Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn hung_connections_time_out_and_are_retried() {
    let emu = Emulator::start(with_user_data(Config {
        hang_first: 2,
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--request-timeout", "300ms"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert_took(&out, Duration::from_millis(300));
    // On the emulator's clock, each hung request is followed by the next in under 1.9 s:
    // the 300 ms timeout and a retry's backoff (100–400 ms), not the 2 s default.
    let log = emu.requests();
    let hung: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].status.is_none())
        .collect();
    assert_eq!(hung.len(), 2, "{log:?}");
    for i in hung {
        let next = log.get(i + 1).expect("a request after the hung one");
        assert!(next.at - log[i].at < Duration::from_millis(1900), "{log:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_refused_then_up() {
    let emu = Emulator::start_later(
        with_user_data(Config::default()),
        Duration::from_millis(700),
    )
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_written(&sb);
    assert_took(&out, Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_imds_gives_up_at_the_deadline() {
    let emu = Emulator::start_later(Config::default(), Duration::from_secs(3600))
        .await
        .unwrap();
    let sb = Sandbox::new();
    seed_previous(&sb);
    let out = sb
        .run(&[
            "metadata",
            "--imds-endpoint",
            &emu.url(),
            "--timeout",
            "2s",
            "--user-data-wait",
            "1s",
        ])
        .await;
    common::assert_exit(&out, 75, "gave no usable answer within the deadline of 2s");
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert_took(&out, Duration::from_millis(1900));
    assert_previous_untouched(&sb);
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_read_when_exposed() {
    let tags: BTreeMap<String, String> =
        [("Name", "web-1"), ("Team Name", "core"), ("env", "prod")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
    let emu = Emulator::start(with_user_data(Config {
        tags: Some(tags.clone()),
        ..Config::default()
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    let out = sb.metadata(&emu.url(), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let facts: serde_json::Value =
        serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(facts["tags"], serde_json::to_value(&tags).unwrap());
    assert_eq!(facts["source"], "imds");
    assert_eq!(facts["region"], "eu-west-1");
    let env = sb.read("params.env").unwrap();
    for line in [
        "BOOTSTAGE_TAG_NAME=\"web-1\"",
        "BOOTSTAGE_TAG_TEAM_NAME=\"core\"",
        "BOOTSTAGE_TAG_ENV=\"prod\"",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in {env}");
    }
}

/// `metadata` with no `--imds-endpoint`, the endpoint given only by the SDK's variable: the
/// variable replaces the sandbox's default (a closed port, 127.0.0.1:9), and every request
/// reaches the emulator it names.
async fn metadata_via_the_sdk_variable(emu: &Emulator) {
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["metadata", "--timeout", "5s"]);
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", emu.url());
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}: {}", emu.url(), out.stderr);
    assert_written(&sb);
    assert_eq!(count(emu, "GET", "/latest/user-data"), 1, "{}", emu.url());
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_from_the_sdk_variable_on_127_0_0_1() {
    let emu = Emulator::start(with_user_data(Config::default()))
        .await
        .unwrap();
    metadata_via_the_sdk_variable(&emu).await;
}

/// Set to 1 where the machine has no IPv6 loopback: the [::1] test then passes saying it
/// did not run, instead of failing.
const NO_IPV6: &str = "BOOTSTAGE_TEST_NO_IPV6";

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_from_the_sdk_variable_over_ipv6_loopback() {
    let emu = Emulator::bind(
        "[::1]:0".parse().unwrap(),
        with_user_data(Config::default()),
    )
    .await;
    let emu = match emu {
        Ok(emu) => emu,
        Err(e) if std::env::var_os(NO_IPV6).is_some_and(|v| v == "1") => {
            eprintln!("NOT RUN: cannot bind [::1] ({e}) and {NO_IPV6}=1 says so is expected");
            return;
        }
        Err(e) => panic!(
            "cannot bind [::1]: {e}. This test needs an IPv6 loopback; set {NO_IPV6}=1 to \
             pass it without running on a machine that has none"
        ),
    };
    metadata_via_the_sdk_variable(&emu).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_ec2_metadata_disabled_is_respected() {
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["metadata", "--timeout", "5s"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    let out = common::run(cmd).await;
    common::assert_exit(&out, 64, "AWS_EC2_METADATA_DISABLED");
}

/// User-data as EC2 serves it, bytes and all: gzip (which cloud-init users send raw) and
/// base64 of gzip. The emulator kept user-data as text and mangled gzip's bytes, so this
/// path was never tested over IMDS; both decode to the same parameters.
#[tokio::test(flavor = "multi_thread")]
async fn gzip_user_data_over_imds_raw_and_in_base64() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(PARAMS.as_bytes()).unwrap();
    let gzipped = gz.finish().unwrap();
    assert!(
        String::from_utf8(gzipped.clone()).is_err(),
        "gzip is not text"
    );
    let b64_of_gzip = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &gzipped);
    for user_data in [gzipped, b64_of_gzip.into_bytes()] {
        let emu = Emulator::start(Config {
            user_data: Some(user_data),
            ..Config::default()
        })
        .await
        .unwrap();
        let sb = Sandbox::new();
        let out = sb.metadata(&emu.url(), &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_written(&sb);
    }
}
