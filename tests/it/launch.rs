//! `bootstage launch`: the app gets params.env's values exactly, replaces bootstage, and a
//! hand run first runs whatever stage is missing.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{Sandbox, adversarial};

fn gz_b64(json: &serde_json::Value) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json.to_string().as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

async fn launch(sb: &Sandbox, args: &[&str]) -> (i32, Vec<u8>, String, u32) {
    let mut all = vec![
        "launch",
        "--user-data-file",
        sb.path("user-data").to_str().unwrap().to_owned().leak(),
    ];
    all.extend_from_slice(args);
    let mut cmd = sb.command(&all);
    cmd.stdout(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_sees_every_value_exactly_and_replaces_bootstage() {
    let values = adversarial::values(400, 99);
    let params: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("K{i:04}"), v.clone().into()))
        .collect();
    let sb = Sandbox::new();
    std::fs::write(sb.path("user-data"), gz_b64(&params.into())).unwrap();
    let (code, stdout, stderr, _) = launch(&sb, &["--", "env", "-0"]).await;
    assert_eq!(code, 0, "{stderr}");
    let env: BTreeMap<String, String> = stdout
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = std::str::from_utf8(e).unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    for (i, want) in values.iter().enumerate() {
        assert_eq!(env.get(&format!("K{i:04}")), Some(want), "K{i:04}");
    }
    assert!(
        stderr.contains("running the metadata stage first"),
        "{stderr}"
    );

    // exec, not spawn: the app has bootstage's PID.
    let (code, stdout, _, pid) = launch(&sb, &["--", "sh", "-c", "echo $$"]).await;
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(stdout).unwrap().trim(), pid.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_run_syncs_what_is_missing_first() {
    let sb = Sandbox::new();
    let src = sb.path("fixtures");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.conf"), "port=8080\n").unwrap();
    let to = sb.path("srv/config");
    let params = serde_json::json!({
        "app": {"name": "web"},
        "bootstage": {"sync": [{"from": format!("file://{}", src.display()), "to": to}]}
    });
    std::fs::write(sb.path("user-data"), params.to_string()).unwrap();
    let script = format!(
        "printf '%s %s' \"$APP_NAME\" \"$(cat {}/app.conf)\"",
        to.display()
    );
    let (code, stdout, stderr, _) = launch(&sb, &["--", "sh", "-c", &script]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(String::from_utf8(stdout).unwrap(), "web port=8080");
    assert!(
        stderr.contains("syncing what is missing before launch"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_errors_for_a_missing_or_unrunnable_command() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("user-data"), r#"{"a": 1}"#).unwrap();
    let (code, _, stderr, _) = launch(&sb, &["--", "/no/such/app"]).await;
    assert_eq!(code, 127, "{stderr}");
    assert!(
        stderr.contains("cannot run \"/no/such/app\": No such file or directory"),
        "{stderr}"
    );
    let script = sb.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let (code, _, stderr, _) = launch(&sb, &["--", script.to_str().unwrap()]).await;
    assert_eq!(code, 126, "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let out = sb.run(&["launch"]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_notify_socket_is_left_to_the_app() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("user-data"), r#"{"a": 1}"#).unwrap();
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut cmd = sb.command(&[
        "launch",
        "--user-data-file",
        sb.path("user-data").to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "printf %s \"$NOTIFY_SOCKET\"",
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::piped());
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        socket_path.to_str().unwrap()
    );
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            !text.lines().any(|l| l == "READY=1"),
            "bootstage must not declare the app ready: {text}"
        );
    }
}
