//! sd_notify over a real unix datagram socket, file permissions, and what logs may say.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use common::{Sandbox, b64, mode};
use imds_emulator::{Config, Emulator};

const SECRET: &str = "s3cr3t-Pa55-w0rd";

fn user_data() -> String {
    b64(&format!(
        r#"{{"db":{{"password":"{SECRET}"}},"port":8080}}"#
    ))
}

/// Every datagram, with whether all three output files existed when it arrived.
fn collect(
    socket: UnixDatagram,
    sb_state: std::path::PathBuf,
) -> std::thread::JoinHandle<Vec<(String, bool)>> {
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let files = ["params.json", "instance.json", "params.env"]
                .iter()
                .all(|f| sb_state.join(f).exists());
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let last = text.contains("BARRIER=1");
            seen.push((text, files));
            if last {
                break;
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_while_waiting_and_ready_only_after_the_files_exist() {
    let emu = Emulator::start(Config {
        user_data: Some(user_data().into()),
        user_data_after: Some(Duration::from_millis(600)),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let messages = collect(socket, sb.state());
    let mut cmd = sb.command(&[
        "metadata",
        "--imds-endpoint",
        &emu.url(),
        "--timeout",
        "10s",
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let messages = messages.join().unwrap();

    let ready: Vec<_> = messages
        .iter()
        .filter(|(m, _)| m.lines().any(|l| l == "READY=1"))
        .collect();
    assert_eq!(ready.len(), 1, "{messages:?}");
    assert!(ready[0].1, "READY=1 arrived before the files existed");
    assert_eq!(
        ready[0].0,
        "READY=1\nSTATUS=parameters ready: 11 variables\n"
    );
    let ready_at = messages
        .iter()
        .position(|(m, _)| m.starts_with("READY=1"))
        .unwrap();
    let waiting: Vec<_> = messages[..ready_at]
        .iter()
        .filter(|(m, _)| m.starts_with("STATUS=waiting for user-data: attempt "))
        .collect();
    assert!(waiting.len() >= 3, "{messages:?}");
    assert!(waiting.iter().all(|(_, files)| !files));
    assert_eq!(
        messages.last().unwrap().0,
        "BARRIER=1\n",
        "readiness is confirmed before exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_reports_status_and_never_ready() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let sb = Sandbox::new();
    let socket_path = sb.path("notify.sock");
    let messages = collect(UnixDatagram::bind(&socket_path).unwrap(), sb.state());
    let mut cmd = sb.command(&[
        "metadata",
        "--imds-endpoint",
        &emu.url(),
        "--timeout",
        "5s",
        "--user-data-wait",
        "300ms",
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 66, "{}", out.stderr);
    let messages = messages.join().unwrap();
    assert!(
        messages.iter().all(|(m, _)| !m.contains("READY=1")),
        "{messages:?}"
    );
    let failed = &messages[messages.len() - 2].0;
    assert!(
        failed.starts_with("STATUS=failed: this instance has no user-data"),
        "{messages:?}"
    );
    assert_eq!(
        messages.last().unwrap().0,
        "BARRIER=1\n",
        "the failure is settled before exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_0600_and_the_dir_0700_under_umask_000() {
    let emu = Emulator::start(Config {
        user_data: Some(user_data().into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 000; exec "$0" "$@""#)
        .arg(common::BIN)
        .args([
            "--state-dir",
            sb.state().to_str().unwrap(),
            "metadata",
            "--imds-endpoint",
            &emu.url(),
            "--timeout",
            "5s",
        ])
        .env_remove("BOOTSTAGE_STATE_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(&sb.state()), 0o700);
    for f in ["params.json", "instance.json", "params.env", ".lock"] {
        assert_eq!(mode(&sb.state().join(f)), 0o600, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_and_no_token_in_logs_even_at_trace() {
    let emu = Emulator::start(Config {
        user_data: Some(user_data().into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["metadata", "--imds-endpoint", &emu.url(), "--timeout", "5s"]);
    cmd.env("BOOTSTAGE_LOG", "trace");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(sb.read("params.env").unwrap().contains(SECRET));
    assert!(
        out.stderr
            .contains("wrote params.json, instance.json, params.env"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
    assert!(
        !out.stderr.contains("AQAE"),
        "a token reached the log: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn journald_gets_priority_prefixes_and_no_timestamps() {
    let emu = Emulator::start(Config {
        user_data: Some(user_data().into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let log = std::fs::File::create(sb.path("journal")).unwrap();
    let meta = log.metadata().unwrap();
    let mut cmd = sb.command(&["metadata", "--imds-endpoint", &emu.url(), "--timeout", "5s"]);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("BOOTSTAGE_LOG", "info")
        .stderr(log);
    let status = cmd.spawn().unwrap().wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(sb.path("journal")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "<6>reading user-data and facts from IMDS endpoint=\"".to_string() + &emu.url() + "\""
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("<6>") || l.starts_with("<4>")),
        "{text}"
    );
}

/// Run by hand with no parameters, s3-sync fetches them first; a test's IMDS is a closed
/// loopback port, so this fails within --timeout, having contacted nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn s3_sync_runs_metadata_first_and_respects_its_deadline() {
    let sb = Sandbox::new();
    let out = sb.run(&["s3-sync", "--timeout", "1s"]).await;
    common::assert_exit(&out, 75, "running the metadata stage first");
    assert!(
        out.stderr
            .contains("IMDS at http://127.0.0.1:9 gave no usable answer within the deadline of 1s"),
        "{}",
        out.stderr
    );
    // The message above names the 1 s deadline; ending within 5 s of it (room for a loaded
    // machine) rules out the metadata stage's own 90 s default.
    assert!(out.elapsed < Duration::from_secs(6), "{:?}", out.elapsed);
}

/// A manager that is slow to read its socket must not stall the stage: status lines are
/// dropped when its queue is full, and polling goes on. Nobody reads the socket until the
/// emulator has seen 30 polls, each of which sends a status line: three times the queue
/// (10 datagrams), so a stage that blocked on a full queue would stop near the 11th and
/// never get there. Only then does user-data appear, and the socket get read.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_notify_reader_does_not_stall_polling() {
    let emu = Emulator::start(Config::default()).await.unwrap();
    let sb = Sandbox::new();
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = sb.command(&[
        "metadata",
        "--imds-endpoint",
        &emu.url(),
        "--timeout",
        "60s",
        "--user-data-wait",
        "60s",
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let child = tokio::spawn(common::run(cmd));
    let polls = || {
        emu.requests()
            .iter()
            .filter(|r| r.path == "/latest/user-data")
            .count()
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while polls() < 30 {
        assert!(
            std::time::Instant::now() < until,
            "polling stalled at {} polls with the socket unread",
            polls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emu.set_user_data(Some(user_data().as_bytes()));
    let messages = collect(socket, sb.state());
    let out = child.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let messages = messages.join().unwrap();
    let waiting = messages
        .iter()
        .filter(|(m, _)| m.contains("STATUS=waiting for user-data: attempt"))
        .count();
    assert!(
        waiting < polls(),
        "status lines were dropped while the queue was full: {waiting} for {} polls",
        polls()
    );
    assert!(
        messages
            .iter()
            .any(|(m, files)| m.starts_with("READY=1") && *files)
    );
}
