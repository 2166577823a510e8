//! The operator surface, hardened (issue 10, items 14–17): durations as systemd reads
//! them, notices that are heard of and never leak a header value. The real binary; a
//! webhook and the IMDS emulator on 127.0.0.1. Each test failed before its fix.

mod common;

use std::time::Duration;

use common::webhook::Webhook;
use common::{Sandbox, assert_exit};
use imds_emulator::{Config, Emulator};
use serde_json::{Value, json};

fn notify_config(sb: &Sandbox, config: Value) {
    std::fs::write(sb.path("notify.json"), config.to_string()).unwrap();
}

/// Item 14: `BOOTSTAGE_TIMEOUT=120` in /etc/bootstage/bootstage.env was a dead boot
/// ("time unit needed"). A bare number is seconds; a bad value names its variable.
#[tokio::test(flavor = "multi_thread")]
async fn durations_without_a_unit_are_seconds() {
    let emu = Emulator::start(Config {
        user_data: Some(common::b64("{\"a\":1}")),
        ..Config::default()
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let url = emu.url();
    let run = |env: Option<&str>, flags: &[&str]| {
        let mut args = vec!["metadata", "--imds-endpoint", url.as_str()];
        args.extend_from_slice(flags);
        let mut cmd = sb.command(&args);
        if let Some(value) = env {
            cmd.env("BOOTSTAGE_TIMEOUT", value);
        }
        common::run(cmd)
    };
    for (env, flags) in [
        (Some("120"), &[][..]),
        (None, &["--timeout", "20"][..]),
        (None, &["--timeout", "1.5", "--user-data-wait", "1"][..]),
        (Some("2min"), &[][..]),
    ] {
        let out = run(env, flags).await;
        assert_eq!(out.code, 0, "{env:?} {flags:?}: {}", out.stderr);
    }
    let forms = "not a duration; use seconds (120) or a duration with a unit (90s, 2min, 1h30m)";
    let out = run(Some("abc"), &[]).await;
    assert_exit(
        &out,
        64,
        &format!("error: BOOTSTAGE_TIMEOUT=\"abc\": {forms}"),
    );
    let out = run(None, &["--timeout", "abc"]).await;
    assert_exit(
        &out,
        64,
        &format!("invalid value 'abc' for '--timeout <DURATION>': {forms}"),
    );
}

/// Item 15: a stage that failed before its first status record (a bad setting, a missing
/// binary) sent no notice. Now only an earlier failed stage silences it.
#[tokio::test]
async fn a_stage_that_failed_before_its_first_record_is_heard_of() {
    let sb = Sandbox::new();
    let hook = Webhook::start(&[]).await;
    notify_config(&sb, json!({"url": hook.url}));
    let out = sb
        .run(&["notify", "failure", "--unit", "bootstage-s3-sync.service"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = hook.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["stage"], "s3-sync");
    assert_eq!(
        got[0].body["error"],
        "bootstage-s3-sync.service failed before it wrote a status record (a bad setting, a missing binary, or a failure at start); see journalctl -u bootstage-s3-sync.service"
    );
}

/// Item 16: the webhook and the command shared one deadline, so a webhook that never
/// answers left the command no time. They run at once now, each with the whole budget.
#[tokio::test]
async fn a_dead_webhook_leaves_the_command_its_time() {
    let sb = Sandbox::new();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let delivered = sb.path("delivered.json");
    notify_config(
        &sb,
        json!({"url": url, "command": format!("cat > {}", delivered.display()), "timeout": 2}),
    );
    let out = sb
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_exit(&out, 75, "the notice was not delivered: POST: ");
    assert!(!out.stderr.contains("command:"), "{}", out.stderr);
    let notice: Value = serde_json::from_slice(&std::fs::read(&delivered).unwrap()).unwrap();
    assert_eq!(
        (&notice["event"], &notice["unit"]),
        (&json!("failure"), &json!("myapp.service"))
    );
    assert!(out.elapsed < Duration::from_secs(6), "{:?}", out.elapsed);
    drop(silent);
}

/// Item 17: a mistyped `notify.headers` put the header value (a bearer token) into the
/// error, the journal, the status record and the notice. Errors name the key only.
#[tokio::test]
async fn a_bad_header_setting_never_shows_its_value() {
    const TOKEN: &str = "Bearer sekrit-0123456789";
    let cases = [
        (
            json!({"Authorization": [TOKEN]}),
            "bootstage.notify.headers.Authorization must be a string",
        ),
        (
            json!({"Authorization": {"v": TOKEN}}),
            "bootstage.notify.headers.Authorization must be a string",
        ),
        (
            json!({"Authorization": format!("{TOKEN}\nX-Evil: 1")}),
            "bootstage.notify.headers.Authorization is not a valid header value (a control character or a line break)",
        ),
        (
            json!({"Bad Name": TOKEN}),
            "bootstage.notify.headers.Bad Name is not a valid header name",
        ),
        (
            json!(TOKEN),
            "bootstage.notify.headers must be an object of header names to strings",
        ),
    ];
    for (headers, message) in cases {
        let sb = Sandbox::new();
        let hook = Webhook::start(&[]).await;
        let params =
            json!({"bootstage": {"notify": {"url": hook.url, "headers": headers, "timeout": 1}}});
        let file = sb.path("user-data.json");
        std::fs::write(&file, params.to_string()).unwrap();
        let out = sb
            .run(&["metadata", "--user-data-file", file.to_str().unwrap()])
            .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let out = sb
            .run(&["notify", "failure", "--unit", "bootstage-metadata.service"])
            .await;
        assert_exit(&out, 65, message);
        for text in [out.stderr.as_str(), out.stdout.as_str()] {
            assert!(!text.contains("sekrit"), "{text}");
        }
        for record in std::fs::read_dir(sb.state().join("status")).unwrap() {
            let text = std::fs::read_to_string(record.unwrap().path()).unwrap();
            assert!(!text.contains("sekrit"), "{text}");
        }
        assert!(hook.received().is_empty());
    }
}
