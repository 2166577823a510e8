//! The operator's commands, run as the real binary: `status` (and `--wait`), `query`, the
//! `hooks` stage, and `notify` against a webhook receiver on loopback. Off-cloud: the
//! parameters come from a user-data file, the instance id from `--fact`.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::Sandbox;
use common::webhook::Webhook;
use serde_json::{Value, json};

const PARAMS: &str = r#"{"app": {"port": 8080, "db": {"host": "db.internal"}, "name": "web app"},
  "list": ["a", "b"], "instance": "a parameter named instance"}"#;

fn user_data(sb: &Sandbox, text: &str) -> String {
    let path = sb.path("user-data");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `bootstage STAGE` off-cloud, as instance `id`.
async fn stage(sb: &Sandbox, stage: &str, params: &str, id: &str) -> common::Outcome {
    let file = user_data(sb, params);
    let fact = format!("instance-id={id}");
    sb.run(&[
        stage,
        "--user-data-file",
        &file,
        "--fact",
        &fact,
        "--fact",
        "region=eu-west-1",
    ])
    .await
}

fn hook(sb: &Sandbox, kind: &str, name: &str, script: &str) {
    let dir = sb.path("hooks").join(kind);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn status_json(out: &common::Outcome) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test]
async fn status_follows_each_stage_from_pending_to_done_or_failed() {
    let sb = Sandbox::new();
    let out = sb.run(&["status"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stdout,
        "metadata  pending\ns3-sync   pending\nhooks     pending\nbootstage: pending\n"
    );

    let bad = stage(&sb, "metadata", "{not json", "i-1").await;
    assert_eq!(bad.code, 65, "{bad:?}");
    let out = sb.run(&["status", "--json"]).await;
    assert_eq!(out.code, 1, "a failed stage: exit 1");
    let doc = status_json(&out);
    assert_eq!(doc["state"], "failed");
    let md = &doc["stages"][0];
    assert_eq!(md["stage"], "metadata");
    assert_eq!(md["state"], "failed");
    assert_eq!(md["exit_code"], 65);
    assert!(
        md["error"]
            .as_str()
            .unwrap()
            .starts_with("user-data is invalid:"),
        "{md}"
    );
    assert!(md["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(md["duration_ms"].is_u64());
    assert_eq!(doc["stages"][1]["state"], "pending");
    let table = sb.run(&["status"]).await.stdout;
    assert!(
        table.starts_with("metadata  failed    ")
            && table.contains("\n          exit 65: user-data is invalid:")
            && table.ends_with("hooks     pending\nbootstage: failed\n"),
        "{table}"
    );

    // Run by hand, the hooks stage runs the stages before it first; all three are done.
    let out = stage(&sb, "hooks", PARAMS, "i-1").await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = sb.run(&["status", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = status_json(&out);
    assert_eq!(doc["state"], "done");
    assert_eq!(common::states(&doc["stages"]), ["done", "done", "done"]);
    assert_eq!(doc["stages"][0]["error"], Value::Null, "no stale error");
}

#[tokio::test]
async fn a_stage_that_vanished_reads_as_failed() {
    let sb = Sandbox::new();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::create_dir_all(sb.state().join("status")).unwrap();
    sb.seed(
        "status/metadata.json",
        &json!({"stage": "metadata", "state": "running", "pid": pid}).to_string(),
    );
    let out = sb.run(&["status", "--json"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let md = &status_json(&out)["stages"][0];
    assert_eq!(md["state"], "failed");
    assert_eq!(
        md["error"],
        format!("the metadata stage (pid {pid}) ended without finishing: killed or stopped")
    );
}

#[tokio::test]
async fn status_wait_returns_as_soon_as_the_outcome_is_known() {
    // Done: the waiter exits 0 right after the last stage writes its record.
    let sb = Sandbox::new();
    let waiter = sb.command(&["status", "--wait", "--json"]).spawn().unwrap();
    let out = stage(&sb, "hooks", PARAMS, "i-1").await;
    assert_eq!(out.code, 0, "{out:?}");
    let finished = Instant::now();
    let waited = waiter.wait_with_output().await.unwrap();
    let lag = finished.elapsed();
    assert_eq!(waited.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert_eq!(doc["state"], "done");
    eprintln!("status --wait returned {lag:?} after the last stage");
    // inotify wakes it; only a missed event would leave it to the 1 s fallback tick.
    assert!(lag < Duration::from_millis(500), "{lag:?}");

    // Failed: exit 1, while later stages are still pending.
    let sb = Sandbox::new();
    let waiter = sb.command(&["status", "--wait"]).spawn().unwrap();
    let out = stage(&sb, "metadata", "{not json", "i-1").await;
    assert_eq!(out.code, 65);
    let waited = waiter.wait_with_output().await.unwrap();
    assert_eq!(waited.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&waited.stdout).ends_with("bootstage: failed\n"));

    // Nothing happens: at its deadline, exit 1 with the reason.
    let sb = Sandbox::new();
    let out = sb.run(&["status", "--wait", "--timeout", "300ms"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("no outcome after 300ms: a stage is still pending or running"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn query_reads_one_value_or_all_and_never_half_an_answer() {
    let sb = Sandbox::new();
    let out = sb.run(&["query", "app.port"]).await;
    assert_eq!(out.code, 66, "no parameters yet: {out:?}");
    assert!(out.stderr.contains("the metadata stage has not run"));
    assert_eq!(out.stdout, "");

    assert_eq!(stage(&sb, "metadata", PARAMS, "i-1").await.code, 0);
    for (key, want) in [
        ("app.port", "8080\n"),
        ("params.app.db.host", "db.internal\n"),
        ("app.name", "web app\n"),
        ("list.1", "b\n"),
        ("instance.instance_id", "i-1\n"),
        ("instance.region", "eu-west-1\n"),
        ("params.instance", "a parameter named instance\n"),
        ("app.db", "{\n  \"host\": \"db.internal\"\n}\n"),
    ] {
        let out = sb.run(&["query", key]).await;
        assert_eq!((out.code, out.stdout.as_str()), (0, want), "{key}: {out:?}");
    }
    let out = sb.run(&["query", "--json", "app.name"]).await;
    assert_eq!(out.stdout, "\"web app\"\n");

    for missing in ["app.nope", "list.2", "app.port.deeper", "instance.nope"] {
        let out = sb.run(&["query", missing]).await;
        assert_eq!(out.code, 1, "{missing}: {out:?}");
        assert_eq!(out.stdout, "");
        assert!(out.stderr.contains(&format!("no such key: {missing}")));
    }

    let all = sb.run(&["query", "--all"]).await;
    assert_eq!(all.code, 0);
    let doc: Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(doc["params"]["app"]["port"], 8080);
    assert_eq!(doc["instance"]["instance_id"], "i-1");
    assert_eq!(doc["instance"]["source"], "flags");

    // A reader who may not read the 0600 files: a clear error and nothing on stdout.
    // The state dir is opened up so only the files' own mode stands in the way.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sb.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        sb.state().join("instance.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    for args in [&["query", "instance.region"][..], &["query", "--all"]] {
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
        ])
        .arg("--state-dir")
        .arg(sb.state())
        .args(args)
        .env_clear()
        .kill_on_drop(true);
        let out = cmd.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {stderr}");
        assert_eq!(out.stdout, b"", "{args:?}: nothing printed");
        assert!(
            stderr.contains("params.json: Permission denied"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn hooks_run_in_order_with_the_parameters_and_per_instance_once_per_instance_id() {
    let sb = Sandbox::new();
    let log = sb.path("hooks.log");
    let line = |tag: &str| {
        format!(
            "echo \"{tag} $BOOTSTAGE_HOOK port=$APP_PORT id=$BOOTSTAGE_INSTANCE_ID\" >> {}",
            log.display()
        )
    };
    hook(&sb, "per-instance.d", "20-second", &line("pi"));
    hook(&sb, "per-instance.d", "10-first", &line("pi"));
    hook(&sb, "per-boot.d", "50-boot", &line("pb"));
    // Not run: no execute bit, a backup, a dotfile, a package leftover.
    for skipped in ["30-noexec", "10-first~", ".hidden", "40-x.dpkg-old"] {
        hook(
            &sb,
            "per-instance.d",
            skipped,
            "echo SKIPPED >> /dev/stderr; exit 9",
        );
    }
    std::fs::set_permissions(
        sb.path("hooks/per-instance.d/30-noexec"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let out = stage(&sb, "hooks", PARAMS, "i-aaa").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        read_log(),
        "pi per-instance.d/10-first port=8080 id=i-aaa\n\
         pi per-instance.d/20-second port=8080 id=i-aaa\n\
         pb per-boot.d/50-boot port=8080 id=i-aaa\n"
    );
    assert!(
        out.stderr.contains("not executable; skipped"),
        "{}",
        out.stderr
    );
    assert!(
        sb.path("lib/instances/i-aaa/per-instance.d/10-first")
            .exists()
    );

    // The next boot of the same instance: per-boot only.
    std::fs::remove_dir_all(sb.state()).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(stage(&sb, "hooks", PARAMS, "i-aaa").await.code, 0);
    assert_eq!(read_log(), "pb per-boot.d/50-boot port=8080 id=i-aaa\n");

    // An image baked from i-aaa (its markers inside) booted as i-bbb: all hooks run again.
    std::fs::remove_dir_all(sb.state()).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(stage(&sb, "hooks", PARAMS, "i-bbb").await.code, 0);
    assert_eq!(
        read_log(),
        "pi per-instance.d/10-first port=8080 id=i-bbb\n\
         pi per-instance.d/20-second port=8080 id=i-bbb\n\
         pb per-boot.d/50-boot port=8080 id=i-bbb\n"
    );
}

#[tokio::test]
async fn a_failing_hook_fails_the_stage_with_its_name_and_code() {
    let sb = Sandbox::new();
    let log = sb.path("hooks.log");
    hook(&sb, "per-instance.d", "10-fails", "exit 3");
    hook(
        &sb,
        "per-instance.d",
        "20-after",
        &format!("echo ran >> {}", log.display()),
    );
    let out = stage(&sb, "hooks", PARAMS, "i-aaa").await;
    assert_eq!(out.code, 70, "{out:?}");
    assert!(
        out.stderr
            .contains("hook per-instance.d/10-fails exited with 3"),
        "{}",
        out.stderr
    );
    assert!(!log.exists(), "no hook after the failed one");
    assert!(
        !sb.path("lib/instances/i-aaa/per-instance.d/10-fails")
            .exists()
    );
    let doc = status_json(&sb.run(&["status", "--json"]).await);
    assert_eq!(doc["stages"][2]["state"], "failed");
    assert_eq!(doc["stages"][2]["exit_code"], 70);
    assert_eq!(
        doc["stages"][2]["error"],
        "hook per-instance.d/10-fails exited with 3"
    );

    // A hook that outlives --hook-timeout is killed with its whole process group.
    let sb = Sandbox::new();
    let pidfile = sb.path("sleeper.pid");
    hook(
        &sb,
        "per-boot.d",
        "10-hangs",
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
    );
    let file = user_data(&sb, PARAMS);
    let out = sb
        .run(&[
            "hooks",
            "--user-data-file",
            &file,
            "--hook-timeout",
            "500ms",
        ])
        .await;
    assert_eq!(out.code, 70, "{out:?}");
    assert!(
        out.stderr
            .contains(
                "hook per-boot.d/10-hangs did not finish within 500ms (--hook-timeout, all hooks together); killed"
            ),
        "{}",
        out.stderr
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the hook's child was killed too: {stat}"
    );
}

fn notify_config(sb: &Sandbox, config: Value) {
    std::fs::write(sb.path("notify.json"), config.to_string()).unwrap();
}

#[tokio::test]
async fn a_failure_notice_reaches_the_webhook_with_what_failed() {
    // The metadata stage fails: no parameters, so the image's notify.json is used.
    let sb = Sandbox::new();
    let hook = Webhook::start(&[503]).await;
    notify_config(
        &sb,
        json!({"url": hook.url, "headers": {"Authorization": "Bearer s3cr3t"}}),
    );
    assert_eq!(stage(&sb, "metadata", "{not json", "i-1").await.code, 65);
    let out = sb
        .run(&["notify", "failure", "--unit", "bootstage-metadata.service"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let got = hook.received();
    assert_eq!(got.len(), 2, "one 503, then delivered");
    assert_eq!(got[1].headers["authorization"], "Bearer s3cr3t");
    assert_eq!(got[1].headers["content-type"], "application/json");
    let notice = &got[1].body;
    assert_eq!(notice["event"], "failure");
    assert_eq!(notice["unit"], "bootstage-metadata.service");
    assert_eq!(notice["stage"], "metadata");
    assert_eq!(notice["exit_code"], 65);
    assert!(
        notice["error"]
            .as_str()
            .unwrap()
            .starts_with("user-data is invalid:")
    );
    assert_eq!(notice["instance"], Value::Null, "no facts were written");
    assert_eq!(notice["timings"][0]["stage"], "metadata");
    assert_eq!(notice["timings"][0]["state"], "failed");
    assert!(notice["timings"][0]["duration_ms"].is_u64());
    assert!(notice["time"].as_str().unwrap().ends_with('Z'));
    assert!(notice["boot_id"].is_string());
    assert!(
        !out.stderr.contains("s3cr3t"),
        "header values are never logged"
    );

    // With parameters, bootstage.notify wins over the file; the command gets the notice too.
    let sb = Sandbox::new();
    let hook = Webhook::start(&[]).await;
    let unused = Webhook::start(&[]).await;
    notify_config(&sb, json!({"url": unused.url}));
    let copy = sb.path("notice-copy.json");
    let params = json!({"bootstage": {"notify": {
        "url": hook.url,
        "command": format!("cat > {}; echo \"$BOOTSTAGE_EVENT\" >> {}", copy.display(), copy.display()),
        "ready": true
    }}});
    assert_eq!(
        stage(&sb, "hooks", &params.to_string(), "i-1").await.code,
        0
    );
    let out = sb.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(unused.received().len(), 0);
    let notice = &got[0].body;
    assert_eq!(notice["event"], "ready");
    assert_eq!(notice["unit"], Value::Null);
    assert_eq!(notice["error"], Value::Null);
    assert_eq!(notice["instance"]["instance_id"], "i-1");
    assert_eq!(common::states(&notice["timings"]), ["done", "done", "done"]);
    let copied = std::fs::read_to_string(&copy).unwrap();
    let (json_part, event) = copied.rsplit_once('}').unwrap();
    let from_command: Value = serde_json::from_str(&format!("{json_part}}}")).unwrap();
    assert_eq!(&from_command, notice, "the command got the same notice");
    assert_eq!(event, "ready\n");
}

#[tokio::test]
async fn notices_are_bounded_and_never_sent_unasked() {
    // No configuration at all: nothing to send, exit 0.
    let sb = Sandbox::new();
    let out = sb.run(&["notify", "failure", "--unit", "x.service"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("nothing to send"));

    // Ready is off unless asked for.
    let hook = Webhook::start(&[]).await;
    notify_config(&sb, json!({"url": hook.url}));
    assert_eq!(sb.run(&["notify", "ready"]).await.code, 0);
    assert_eq!(hook.received().len(), 0);

    // A stage that never ran because an earlier one failed: the earlier stage's notice
    // covers it.
    std::fs::create_dir_all(sb.state().join("status")).unwrap();
    sb.seed(
        "status/metadata.json",
        &json!({"stage": "metadata", "state": "failed", "exit_code": 66, "error": "no user-data"})
            .to_string(),
    );
    let out = sb
        .run(&["notify", "failure", "--unit", "bootstage-hooks.service"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("the stage never ran because an earlier one failed: no notice of its own"),
        "{}",
        out.stderr
    );
    assert_eq!(hook.received().len(), 0);
    std::fs::remove_file(sb.state().join("status/metadata.json")).unwrap();

    // A 4xx is final: one attempt, exit 75, the boot is not held.
    let hook = Webhook::start(&[404]).await;
    notify_config(&sb, json!({"url": hook.url}));
    let out = sb
        .run(&["notify", "failure", "--unit", "myapp.service"])
        .await;
    assert_eq!(out.code, 75, "{out:?}");
    assert!(
        out.stderr
            .contains("the notice was not delivered: POST: HTTP 404")
    );
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["stage"], Value::Null, "not a bootstage unit");
    assert_eq!(
        got[0].body["error"],
        "myapp.service failed; see journalctl -u myapp.service"
    );

    // A receiver that is down: retried until the configured timeout, then exit 75.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    notify_config(&sb, json!({"url": url, "timeout": "3s"}));
    let out = sb.run(&["notify", "failure", "--unit", "x.service"]).await;
    assert_eq!(out.code, 75, "{out:?}");
    let retries = out.stderr.matches("notice not delivered; retrying").count();
    assert!(
        (1..=3).contains(&retries),
        "{retries} retries in 3 s: {}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);

    // A bad configuration is a clear error.
    notify_config(&sb, json!({"url": "ftp://x", "ready": true}));
    let out = sb.run(&["notify", "ready"]).await;
    assert_eq!(out.code, 65);
    assert!(out.stderr.contains("url must be http:// or https://"));
}

/// A typo in bootstage's own settings booted an instance with no config and exit 0:
/// `{"bootstage": {"sycn": […]}}` passed `metadata`, and s3-sync only said "nothing to
/// sync". The whole `bootstage` object (and the image's settings files) is now checked
/// before anything is written: 65, naming the path and the likely key.
#[tokio::test]
async fn a_misspelt_setting_fails_the_first_stage_and_writes_nothing() {
    let sb = Sandbox::new();
    sb.seed("params.json", "old json\n");
    let cases = [
        (
            r#"{"bootstage": {"sycn": [{"from": "s3://b/p/", "to": "/srv/c"}]}}"#,
            "bootstage.sycn: unknown setting; did you mean bootstage.sync? (known: sync, watch, import, notify, lifecycle, report)",
        ),
        (
            r#"{"bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "file_mode": 640}]}}"#,
            "bootstage.sync[0].file_mode: expected a string like \"0640\", got the number 640",
        ),
        (
            r#"{"bootstage": {"lifecycle": {"asg": {"hook": "launch", "hold_fro": "1h"}}}}"#,
            "bootstage.lifecycle.asg.hold_fro: unknown setting; did you mean bootstage.lifecycle.asg.hold_for?",
        ),
        (
            r#"{"bootstage": {"notify": {"url": "http://127.0.0.1:9/T0KEN-IN-URL", "header": {}}}}"#,
            "bootstage.notify.header: unknown setting; did you mean bootstage.notify.headers?",
        ),
    ];
    for (params, message) in cases {
        let out = stage(&sb, "metadata", params, "i-1").await;
        common::assert_exit(&out, 65, message);
        assert!(!out.stderr.contains("T0KEN"), "{}", out.stderr);
        assert_eq!(sb.read("params.json").unwrap(), "old json\n");
        assert!(sb.read("params.env").is_none());
    }
    // The image's file is checked with the parameters, named by its path.
    std::fs::write(
        sb.path("lifecycle-image.json"),
        r#"{"asgs": {"hook": "h"}}"#,
    )
    .unwrap();
    let out = stage(&sb, "metadata", "{}", "i-1").await;
    common::assert_exit(
        &out,
        65,
        &format!(
            "{}.asgs: unknown setting; did you mean {}.asg?",
            sb.path("lifecycle-image.json").display(),
            sb.path("lifecycle-image.json").display()
        ),
    );
    std::fs::remove_file(sb.path("lifecycle-image.json")).unwrap();

    // Near misses that could be meant are warnings, and the boot goes on.
    let out = stage(
        &sb,
        "metadata",
        r#"{"bootstrap": {"sync": []}, "db": {"password": {"smm": "/x"}}}"#,
        "i-1",
    )
    .await;
    common::assert_exit(
        &out,
        0,
        "the top-level key \"bootstrap\" is not bootstage's settings",
    );
    assert!(
        out.stderr.contains(
            "parameter \"db.password\" looks like a reference with a misspelt key (did you mean \"ssm\"?)"
        ),
        "{}",
        out.stderr
    );
}

/// `bootstage validate` checks user-data offline as `metadata` would: every example in
/// the README and `examples/` is valid (a README fragment is wrapped as what it shows: a
/// `"bootstage": …` member, or one sync entry), a typo is 65, and only names are printed.
#[tokio::test]
async fn every_documented_example_validates_and_a_typo_does_not() {
    let sb = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut examples =
        vec![std::fs::read_to_string(format!("{root}/examples/params.json")).unwrap()];
    for block in readme.split("```json\n").skip(1) {
        let text = block.split("```").next().unwrap().trim();
        let example = if text.starts_with("\"bootstage\"") {
            format!("{{{text}}}")
        } else if text.contains("\"from\"") && !text.contains("\"bootstage\"") {
            format!("{{\"bootstage\": {{\"sync\": [{text}]}}}}")
        } else {
            text.to_string()
        };
        examples.push(example);
    }
    assert!(examples.len() >= 6, "{} examples", examples.len());
    for (i, example) in examples.iter().enumerate() {
        serde_json::from_str::<Value>(example).unwrap_or_else(|e| panic!("{e}: {example}"));
        let file = sb.path(&format!("example-{i}.json"));
        std::fs::write(&file, example).unwrap();
        let out = sb.run(&["validate", file.to_str().unwrap()]).await;
        common::assert_exit(&out, 0, "valid;");
    }

    let file = sb.path("typo.json");
    std::fs::write(
        &file,
        r#"{"db": {"password": {"ssm": "/shop/db"}}, "tls": {"secretsmanager": "k", "env": false},
            "app": {"port": 8080, "token": "s3cr3t-value"},
            "bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "dir_mode": "0755"}]}}"#,
    )
    .unwrap();
    let out = sb.run(&["validate", file.to_str().unwrap()]).await;
    common::assert_exit(&out, 0, "valid; 3 variables, 2 references, 0 imports");
    assert_eq!(out.stdout, "APP_PORT\nAPP_TOKEN\nDB_PASSWORD\n");
    assert!(!out.stderr.contains("s3cr3t") && !out.stdout.contains("s3cr3t"));
    std::fs::write(
        &file,
        r#"{"bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "dir_mod": "0755"}]}}"#,
    )
    .unwrap();
    let out = sb.run(&["validate", file.to_str().unwrap()]).await;
    common::assert_exit(
        &out,
        65,
        "bootstage.sync[0].dir_mod: unknown setting; did you mean bootstage.sync[0].dir_mode?",
    );
    assert_eq!(out.stdout, "");
}

// The first mistakes of a newcomer: each says what is wrong and what to type instead, and
// ends with the exit code the README gives it.

/// `--user-data-file` naming no file: the file and the OS error (66), not "no user-data".
#[tokio::test]
async fn a_missing_user_data_file_is_named_with_the_os_error() {
    let sb = Sandbox::new();
    let missing = sb.path("nope.json");
    let out = sb
        .run(&["metadata", "--user-data-file", missing.to_str().unwrap()])
        .await;
    common::assert_exit(
        &out,
        66,
        &format!(
            "user-data file {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
    assert!(!out.stderr.contains("has no user-data"), "{}", out.stderr);
    assert!(sb.read("params.json").is_none());
}

/// An IMDS endpoint without `http://`, or with `/latest` on it: bad usage at once (64),
/// saying what to write, never a wait for the deadline.
#[tokio::test]
async fn an_imds_endpoint_without_scheme_or_with_a_path_is_refused_at_once() {
    let sb = Sandbox::new();
    let out = sb
        .run(&[
            "metadata",
            "--imds-endpoint",
            "127.0.0.1:1338",
            "--timeout",
            "5s",
        ])
        .await;
    common::assert_exit(
        &out,
        64,
        "--imds-endpoint \"127.0.0.1:1338\" needs http:// (IMDS is plain HTTP): write http://127.0.0.1:1338",
    );
    let out = sb
        .run(&[
            "metadata",
            "--imds-endpoint",
            "http://127.0.0.1:1338/latest",
            "--timeout",
            "5s",
        ])
        .await;
    common::assert_exit(
        &out,
        64,
        "--imds-endpoint \"http://127.0.0.1:1338/latest\": give the address alone, without /latest (bootstage adds the paths): write http://127.0.0.1:1338",
    );
    // The SDK's variable is checked the same way, and named.
    let mut cmd = sb.command(&["metadata", "--timeout", "5s"]);
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "127.0.0.1:1338");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        64,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT=\"127.0.0.1:1338\" needs http://",
    );
}

/// A hooks dir that is not there, or hooks put in `per-boot/` instead of `per-boot.d/`:
/// a warning naming the path; the stage still succeeds.
#[tokio::test]
async fn a_missing_hooks_dir_or_one_without_d_is_warned_about() {
    let sb = Sandbox::new();
    let out = stage(&sb, "hooks", PARAMS, "i-1").await;
    common::assert_exit(
        &out,
        0,
        &format!(
            "the hooks dir {} does not exist: no hooks run (hooks go in per-instance.d/ and per-boot.d/ in it)",
            sb.path("hooks").display()
        ),
    );
    for dir in ["per-boot", "per-instance"] {
        let sb = Sandbox::new();
        hook(&sb, dir, "10-setup", "true");
        let out = stage(&sb, "hooks", PARAMS, "i-1").await;
        common::assert_exit(
            &out,
            0,
            &format!(
                "{} is not read: hooks go in {}.d/",
                sb.path("hooks").join(dir).display(),
                sb.path("hooks").join(dir).display()
            ),
        );
    }
}

/// A hook without `#!`: the stage fails (70) saying that a hook needs one.
#[tokio::test]
async fn a_hook_without_a_shebang_says_it_needs_one() {
    let sb = Sandbox::new();
    let dir = sb.path("hooks").join("per-boot.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10-setup"), "echo set up\n").unwrap();
    std::fs::set_permissions(dir.join("10-setup"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = stage(&sb, "hooks", PARAMS, "i-1").await;
    common::assert_exit(
        &out,
        70,
        "hook per-boot.d/10-setup cannot start: Exec format error (os error 8): a hook needs a #! line first (e.g. #!/bin/sh)",
    );
}

/// `s3-sync` from S3 as the operator runs it off-cloud: a region, and the endpoint and
/// credentials the test gives (none by default). S3 itself is never reached.
fn s3_sync_command(sb: &Sandbox, from: &str, extra: &[&str]) -> tokio::process::Command {
    let to = sb.path("dest");
    let mut args = vec!["s3-sync", "--from", from, "--to", to.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = sb.command(&args);
    cmd.env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
        // No profile files of this machine's user.
        .env("HOME", sb.dir.path())
        .env("AWS_CONFIG_FILE", sb.path("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", sb.path("no-aws-credentials"));
    cmd
}

/// No credentials at all for an `s3://` source: 77 within seconds, one line per cause,
/// and none of the SDK's chain dumps at the default log level.
#[tokio::test]
async fn no_aws_credentials_fail_at_once_with_each_cause() {
    let sb = Sandbox::new();
    // IMDS (the harness's default) is a closed loopback port.
    let mut cmd = s3_sync_command(&sb, "s3://bucket/app/", &["--sync-timeout", "60s"]);
    cmd.env_remove("BOOTSTAGE_LOG");
    let out = common::run(cmd).await;
    common::assert_exit(&out, 77, "s3://bucket/app/: no AWS credentials for S3:");
    for cause in [
        "\n  no credential source found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE",
        "\n  the instance's role: IMDS at http://127.0.0.1:9 cannot be reached",
    ] {
        assert!(out.stderr.contains(cause), "{cause:?} in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("Attempted"), "{}", out.stderr);
    assert!(!out.stderr.contains("syncing again"), "{}", out.stderr);
    assert!(out.stderr.lines().count() <= 5, "{}", out.stderr);

    // IMDS turned off: said so.
    let mut cmd = s3_sync_command(&sb, "s3://bucket/app/", &["--sync-timeout", "60s"]);
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        77,
        "\n  the instance's role: IMDS is disabled (AWS_EC2_METADATA_DISABLED=true)",
    );

    // IMDS answers, but the instance has no role.
    let emu = imds_emulator::Emulator::start(imds_emulator::Config::default())
        .await
        .unwrap();
    let mut cmd = s3_sync_command(&sb, "s3://bucket/app/", &["--sync-timeout", "60s"]);
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", emu.url());
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        77,
        "\n  the instance's role: this instance has no IAM role (no instance profile): attach one whose policy allows what bootstage calls",
    );
}

/// `AWS_ENDPOINT_URL_S3` without a scheme: bad usage (64) before any request.
#[tokio::test]
async fn an_aws_endpoint_without_scheme_is_bad_usage_at_once() {
    let sb = Sandbox::new();
    let mut cmd = s3_sync_command(&sb, "s3://bucket/app/", &["--sync-timeout", "5s"]);
    cmd.env("AWS_ENDPOINT_URL_S3", "127.0.0.1:9000")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        64,
        "AWS_ENDPOINT_URL_S3=\"127.0.0.1:9000\" needs a scheme: write http://127.0.0.1:9000 (or https://)",
    );
    // A password in the endpoint is never repeated.
    let mut cmd = s3_sync_command(&sb, "s3://bucket/app/", &["--sync-timeout", "5s"]);
    cmd.env("AWS_ENDPOINT_URL_S3", "me:s3cret@127.0.0.1:9000")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        64,
        "AWS_ENDPOINT_URL_S3=\"…@127.0.0.1:9000\" needs a scheme: write http://…@127.0.0.1:9000 (or https://)",
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
}

/// A source of the wrong shape says what it is and what to write (65); a missing directory
/// is missing input (66), like a missing archive; neither is a bare OS error.
#[tokio::test]
async fn a_source_of_the_wrong_shape_or_a_missing_directory_says_what_to_write() {
    let sb = Sandbox::new();
    let fixtures = sb.path("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    std::fs::write(fixtures.join("notes.txt"), "a file").unwrap();
    let status = std::process::Command::new("tar")
        .arg("cf")
        .arg(fixtures.join("app.tar"))
        .arg("-C")
        .arg(&fixtures)
        .arg("notes.txt")
        .status()
        .unwrap();
    assert!(status.success());
    let sync = |from: String| {
        let to = sb.path("dest");
        let args = ["s3-sync", "--from", &from, "--to", to.to_str().unwrap()].map(str::to_string);
        let cmd = sb.command(&args.each_ref().map(String::as_str));
        common::run(cmd)
    };
    let at = fixtures.display();

    let out = sync(format!("file://{at}/app.tar/")).await;
    common::assert_exit(
        &out,
        65,
        &format!(
            "file://{at}/app.tar/: ends in / (a directory), but app.tar is an archive's name: write file://{at}/app.tar"
        ),
    );
    let out = sync("s3://bucket/releases/app-1.4.tar.zst/".into()).await;
    common::assert_exit(
        &out,
        65,
        "s3://bucket/releases/app-1.4.tar.zst/: ends in / (a prefix), but app-1.4.tar.zst is an archive's name: write s3://bucket/releases/app-1.4.tar.zst",
    );
    let out = sync(format!("file://{at}/notes.txt")).await;
    common::assert_exit(
        &out,
        65,
        &format!(
            "file://{at}/notes.txt: a file, not a directory: a file:// source is a directory (file:///DIR/) or an archive (.tar, .tar.gz, .tgz, .tar.zst)"
        ),
    );
    assert!(!out.stderr.contains("os error"), "{}", out.stderr);
    let out = sync(format!("file://{at}/confg/")).await;
    common::assert_exit(
        &out,
        66,
        &format!("file://{at}/confg/: no such directory ({at} has no confg)"),
    );
    assert!(!out.stderr.contains("os error"), "{}", out.stderr);
}

/// `s3-sync --from` with the metadata flags `--help` lists under "run first": they are
/// honoured (the metadata stage runs first when its outputs are missing), not ignored.
#[tokio::test]
async fn s3_sync_from_honours_the_metadata_flags() {
    let sb = Sandbox::new();
    let source = sb.path("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("app.conf"), "x").unwrap();
    let file = user_data(&sb, PARAMS);
    let to = sb.path("dest");
    let from = format!("file://{}/", source.display());
    let out = sb
        .run(&[
            "s3-sync",
            "--from",
            &from,
            "--to",
            to.to_str().unwrap(),
            "--user-data-file",
            &file,
            "--fact",
            "region=eu-west-1",
            "--fact",
            "instance-id=i-1",
        ])
        .await;
    common::assert_exit(
        &out,
        0,
        "parameters missing or --refresh: running the metadata stage first",
    );
    let facts: Value = serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(facts["region"], "eu-west-1");
    assert!(to.join("app.conf").exists());

    // From S3, the fact's region is the one used: no "no AWS region" (S3 itself is a
    // closed port here, so the pass runs out of time).
    let sb = Sandbox::new();
    let file = user_data(&sb, PARAMS);
    let mut cmd = s3_sync_command(
        &sb,
        "s3://bucket/app/",
        &[
            "--user-data-file",
            &file,
            "--fact",
            "region=eu-west-1",
            "--sync-timeout",
            "2s",
        ],
    );
    cmd.env_remove("AWS_REGION")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example");
    let out = common::run(cmd).await;
    assert!(!out.stderr.contains("no AWS region"), "{}", out.stderr);
    common::assert_exit(&out, 75, "the sync did not finish within --sync-timeout 2s");
}

/// A negative duration says it cannot be negative and what to type (64).
#[tokio::test]
async fn a_negative_duration_says_what_to_type() {
    let sb = Sandbox::new();
    let out = sb.run(&["metadata", "--timeout", "-5s"]).await;
    common::assert_exit(
        &out,
        64,
        "invalid value '-5s' for '--timeout <DURATION>': a duration cannot be negative; use seconds (120) or a duration with a unit (90s, 2min, 1h30m)",
    );
}

/// `launch myapp` without `--` says where the command goes (64).
#[tokio::test]
async fn launch_without_dashes_says_where_the_command_goes() {
    let sb = Sandbox::new();
    let out = sb.run(&["launch", "myapp", "--port", "80"]).await;
    common::assert_exit(
        &out,
        64,
        &format!(
            "tip: the app's command goes after --: bootstage --state-dir {} launch -- myapp --port 80",
            sb.state().display()
        ),
    );
}

/// `lifecycle watch --lifecycle-config FILE`, the flag after the subcommand, is read.
#[tokio::test]
async fn a_lifecycle_flag_after_the_subcommand_is_honoured() {
    let sb = Sandbox::new();
    let config = sb.path("lifecycle.json");
    std::fs::write(&config, r#"{"asgs": {"hook": "h"}}"#).unwrap();
    for args in [
        ["lifecycle", "watch", "--lifecycle-config"],
        ["lifecycle", "--lifecycle-config", "watch"],
    ] {
        let mut args = args.map(str::to_string).to_vec();
        let at = args.iter().position(|a| a == "--lifecycle-config").unwrap();
        args.insert(at + 1, config.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.run(&args).await;
        common::assert_exit(
            &out,
            65,
            &format!("{}.asgs: unknown setting", config.display()),
        );
    }
}

/// A root-only command run as another user: 77, "run as root" and why.
#[tokio::test]
async fn root_only_commands_as_another_user_say_run_as_root() {
    let sb = Sandbox::new();
    // The state dir as a boot leaves it: root's, 0700, below a directory anyone may enter.
    let out = stage(&sb, "metadata", PARAMS, "i-1").await;
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let setpriv = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ];
        common::run(sb.command_under(&setpriv, args))
    };
    let out = as_nobody(&["status"]).await;
    common::assert_exit(
        &out,
        77,
        &format!(
            "cannot read {} as uid 65534: run as root (sudo bootstage status): the stages' records are root's",
            sb.state().join("status/metadata.json").display()
        ),
    );
    assert_eq!(out.stdout, "");
    let file = user_data(&sb, PARAMS);
    let out = as_nobody(&["metadata", "--user-data-file", &file]).await;
    common::assert_exit(
        &out,
        77,
        &format!(
            "cannot write {} as uid 65534: run as root (sudo bootstage metadata): the state dir is root's",
            sb.state().display()
        ),
    );
    assert!(!out.stderr.contains("cannot record"), "{}", out.stderr);
}

/// The README's exit-code table has a row for every code of `base/exit.rs` and no other,
/// in numeric order, and names the cases a newcomer meets first.
#[test]
fn the_readme_lists_every_exit_code_in_order() {
    let root = env!("CARGO_MANIFEST_DIR");
    let source = std::fs::read_to_string(format!("{root}/src/base/exit.rs")).unwrap();
    let enum_body = source
        .split("pub enum ExitCode {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap();
    let mut codes: Vec<u32> = enum_body
        .lines()
        .filter_map(|l| l.trim().split_once(" = "))
        .map(|(_, n)| n.trim_end_matches(',').parse().unwrap())
        .collect();
    codes.sort();
    assert!(codes.len() >= 14, "{codes:?}");

    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let table = readme
        .split("## Exit codes\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .find(|block| block.trim_start().starts_with('|'))
        .unwrap();
    let mut rows: Vec<(u32, &str)> = Vec::new();
    for line in table.trim().lines().skip(2) {
        let cells: Vec<&str> = line.split(" | ").collect();
        for code in cells[0].trim_start_matches('|').trim().split(", ") {
            rows.push((code.parse().unwrap(), line));
        }
    }
    let listed: Vec<u32> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        listed, codes,
        "the README's rows, in order, against exit.rs"
    );
    let row = |code: u32| rows.iter().find(|r| r.0 == code).unwrap().1;
    assert!(
        row(66).contains("`query` before the metadata stage ran"),
        "{}",
        row(66)
    );
    assert!(
        row(66).contains("a `file://` directory that does not exist"),
        "{}",
        row(66)
    );
    assert!(row(77).contains("run as another user"), "{}", row(77));
    assert!(row(64).contains("endpoint"), "{}", row(64));
}

/// `bootstage validate --online`, with moto's credentials and endpoint.
fn validate_online(
    sb: &Sandbox,
    file: &std::path::Path,
    extra: &[&str],
) -> tokio::process::Command {
    let mut args = vec!["validate", "--online", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut cmd = sb.command(&args);
    cmd.envs(common::moto::moto().env());
    cmd
}

/// Seeds moto for the online checks: SSM parameters and a secret whose values must never
/// be printed.
async fn online_fixtures(prefix: &str) {
    let moto = common::moto::moto();
    let ssm = moto.ssm().await;
    for (name, kind) in [
        (format!("/{prefix}/db"), "SecureString"),
        (format!("/{prefix}/import/a"), "String"),
        (format!("/{prefix}/import/deep/b"), "SecureString"),
    ] {
        ssm.put_parameter()
            .name(name)
            .value(format!("s3cr3t-ssm-{prefix}"))
            .r#type(kind.into())
            .send()
            .await
            .unwrap();
    }
    moto.secretsmanager()
        .await
        .create_secret()
        .name(format!("{prefix}-api"))
        .secret_string(format!("s3cr3t-secret-{prefix}"))
        .send()
        .await
        .unwrap();
    let bucket = moto.bucket(prefix).await;
    bucket.put("app/config.yml", "port: 1").await;
}

/// `validate --online`: one line per thing the user-data names, the missing ones failing
/// with why, exit 66; no value of a parameter or a secret in any output.
#[tokio::test]
async fn validate_online_names_what_is_missing_and_never_a_value() {
    let sb = Sandbox::new();
    online_fixtures("vo-missing").await;
    let file = sb.path("user-data.json");
    std::fs::write(
        &file,
        r#"{"db": {"password": {"ssm": "/vo-missing/db"}}, "gone": {"ssm": "/vo-missing/gone"},
            "api": {"secretsmanager": "vo-missing-api", "env": false},
            "bootstage": {"sync": [
                {"from": "s3://vo-missing/app/", "to": "/srv/app"},
                {"from": "s3://vo-missing/bundles/app.tar.zst", "to": "/srv/code"}]}}"#,
    )
    .unwrap();
    let out = common::run(validate_online(&sb, &file, &[])).await;
    common::assert_exit(
        &out,
        66,
        "online: 5 checks, 3 ok, 0 skipped, 2 failed (exit 66)",
    );
    assert_eq!(
        out.stdout,
        "DB_PASSWORD\nGONE\n\
         ok   SSM parameter \"/vo-missing/db\" (db.password)\n\
         FAIL SSM parameter \"/vo-missing/gone\" (gone): does not exist (or is not visible to these credentials)\n\
         ok   secret \"vo-missing-api\" (api)\n\
         ok   S3 prefix \"s3://vo-missing/app/\"\n\
         FAIL S3 archive \"s3://vo-missing/bundles/app.tar.zst\": no such object (HeadObject: 404)\n"
    );
    assert!(
        !format!("{}{}", out.stdout, out.stderr).contains("s3cr3t"),
        "{out:?}"
    );
}

/// `validate --online` with everything in place: exit 0, the import counted, a local
/// directory checked on disk, the lifecycle hook and the queue found; a per-instance queue
/// is skipped, saying why; no region is bad usage (64); an endpoint that does not answer
/// is 75 within `--timeout`.
#[tokio::test]
async fn validate_online_passes_when_everything_exists() {
    let sb = Sandbox::new();
    online_fixtures("vo-all").await;
    let moto = common::moto::moto();
    let (queue_url, _) = moto.queue("vo-all-events").await;
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
        .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    let asg = aws_sdk_autoscaling::Client::from_conf(config);
    asg.create_launch_configuration()
        .launch_configuration_name("vo-all")
        .image_id("ami-12c6146b")
        .instance_type("t2.micro")
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name("vo-all")
        .launch_configuration_name("vo-all")
        .min_size(0)
        .max_size(1)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    asg.put_lifecycle_hook()
        .auto_scaling_group_name("vo-all")
        .lifecycle_hook_name("boot")
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .send()
        .await
        .unwrap();
    std::fs::create_dir(sb.path("config")).unwrap();
    let user_data = |queue: &str, hook: &str| {
        json!({
            "db": {"password": {"ssm": "/vo-all/db"}},
            "api": {"secretsmanager": "vo-all-api", "json_key": "token"},
            "bootstage": {
                "import": [{"ssm_path": "/vo-all/import/", "recursive": true}],
                "sync": [
                    {"from": "s3://vo-all/app/", "to": "/srv/app"},
                    {"from": format!("file://{}/", sb.path("config").display()), "to": "/srv/config"}
                ],
                "lifecycle": {"asg": {"hook": hook, "group": "vo-all"}},
                "watch": {"sqs": queue}
            }
        })
        .to_string()
    };
    let file = sb.path("user-data.json");
    std::fs::write(&file, user_data(&queue_url, "boot")).unwrap();
    let out = common::run(validate_online(&sb, &file, &[])).await;
    common::assert_exit(&out, 0, "online: 7 checks, 7 ok, 0 skipped, 0 failed\n");
    let config = format!("file://{}/", sb.path("config").display());
    let expected = [
        "ok   SSM parameter \"/vo-all/db\" (db.password)".to_string(),
        "ok   secret \"vo-all-api\" (api)".to_string(),
        "ok   import \"/vo-all/import/\": 2 parameters (recursive)".to_string(),
        "ok   S3 prefix \"s3://vo-all/app/\"".to_string(),
        format!("ok   directory {config:?}"),
        "ok   lifecycle hook \"boot\" of group \"vo-all\"".to_string(),
        format!("ok   SQS queue {queue_url:?}"),
    ];
    let lines: Vec<&str> = out.stdout.lines().skip(2).collect();
    assert_eq!(lines, expected, "{}", out.stdout);
    assert!(
        !format!("{}{}", out.stdout, out.stderr).contains("s3cr3t"),
        "{out:?}"
    );

    // A hook the group does not have; a per-instance queue, skipped.
    let per_instance = "http://127.0.0.1:9/123456789012/q-{instance_id}";
    std::fs::write(&file, user_data(per_instance, "nope")).unwrap();
    let out = common::run(validate_online(&sb, &file, &[])).await;
    common::assert_exit(
        &out,
        66,
        "online: 7 checks, 5 ok, 1 skipped, 1 failed (exit 66)",
    );
    assert!(
        out.stdout.contains(
            "\nFAIL lifecycle hook \"nope\" of group \"vo-all\": the group has no hook of this name\n"
        ) && out.stdout.contains(&format!(
            "\nskip SQS queue {per_instance:?}: names a per-instance queue\n"
        )),
        "{}",
        out.stdout
    );

    // No region: said, 64, before any call.
    let mut cmd = validate_online(&sb, &file, &[]);
    cmd.env_remove("AWS_REGION");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        64,
        "validate --online needs an AWS region: set AWS_REGION",
    );

    // Nothing answers: 75 within the bound.
    std::fs::write(&file, r#"{"db": {"ssm": "/vo-all/db"}}"#).unwrap();
    let mut cmd = validate_online(&sb, &file, &["--timeout", "2s"]);
    cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let out = common::run(cmd).await;
    common::assert_exit(&out, 75, "(exit 75)");
    assert!(
        out.stdout
            .contains("FAIL SSM parameter \"/vo-all/db\" (db): cannot reach SSM"),
        "{}",
        out.stdout
    );
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
}
