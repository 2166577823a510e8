//! `scripts/demo.sh` as someone trying the project runs it: from a clone under /tmp, the
//! most common place for one. There its hooks sat below sticky /tmp, the hook
//! check refused them, and the demo exited 77.
//!
//! The clone is a copy of what the demo reads (`scripts/`, `examples/`) in a fresh
//! `mktemp -d` under /tmp. It runs with `--debug-build` and `CARGO_TARGET_DIR` pointing at
//! this build's target dir, so it runs the bootstage under test and no second build: a
//! release build of the tree would take many minutes. `cargo test` builds no
//! imds-emulator binary, so the test builds it first, into that same target dir (a few
//! crates the first time, nothing after).

use crate::common;

use std::path::Path;
use std::process::Command;

#[tokio::test]
async fn the_demo_runs_from_a_clone_under_tmp() {
    let debug = Path::new(common::BIN).parent().unwrap();
    let target = debug.parent().unwrap();
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "imds-emulator",
            "--bin",
            "imds-emulator",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("cargo");
    assert!(built.success(), "cargo build -p imds-emulator: {built}");
    assert!(debug.join("imds-emulator").is_file());

    let tmp = tempfile::Builder::new()
        .prefix("bootstage-demo.")
        .tempdir_in(common::TMP)
        .unwrap();
    let clone = tmp.path().join("clone");
    std::fs::create_dir(&clone).unwrap();
    let copied = Command::new("cp")
        .args(["-R", "--preserve=mode", "scripts", "examples"])
        .arg(&clone)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cp");
    assert!(copied.success(), "cp: {copied}");

    // As on a CI runner or a developer's VM on Compute Engine, whose DMI names Google:
    // the demo still asks only its emulator, as EC2's IMDS.
    let dmi = tempfile::tempdir().unwrap();
    std::fs::write(dmi.path().join("sys_vendor"), "Google\n").unwrap();
    std::fs::write(dmi.path().join("product_name"), "Google Compute Engine\n").unwrap();
    let mut demo = tokio::process::Command::new(clone.join("scripts/demo.sh"));
    demo.arg("--debug-build")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("CARGO_TARGET_DIR", target)
        .env("BOOTSTAGE_DMI_DIR", dmi.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = common::run(demo).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let count = |line: &str| lines.iter().filter(|l| **l == line).count();
    // Two runs of the hooks stage: the per-instance hook once, the per-boot one each time.
    assert_eq!(
        count("   per-instance hook: first boot of i-0123456789abcdef0, setting up shop-web"),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(
        count("   per-boot hook: per-boot.d/10-every-boot"),
        2,
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("hooks     done ")),
        "{}",
        out.stdout
    );
    assert_eq!(count("bootstage: done"), 1, "{}", out.stdout);
    assert_eq!(
        count(
            "shop-web (staging) on port 8080, instance i-0123456789abcdef0 in eu-west-1; \
             config: listen = 8080 workers = 4 "
        ),
        1,
        "{}",
        out.stdout
    );
    // The example's password is an SSM reference, which moto's SSM answered (this machine
    // has moto: the tests need it), and the app got it: 20 characters.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("== moto's SSM at http://127.0.0.1:")
                && l.ends_with(" holds /shop-web/staging/db-password"))
            .count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(count("db password: 20 characters"), 1, "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().last(),
        Some("BOOTSTAGE_REGION=\"local-1\""),
        "{}",
        out.stdout
    );
    // The demo removes its work dir: the clone holds what was copied and target/.
    let mut left: Vec<String> = std::fs::read_dir(&clone)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["examples", "scripts", "target"]);
    assert_eq!(std::fs::read_dir(clone.join("target")).unwrap().count(), 0);
}

/// The README's example scenario for `imds-emulator --config` (section "Off-cloud") is one
/// the emulator takes: every key known, the timeline's path settable, and it serves what
/// the file says.
#[tokio::test]
async fn the_readme_emulator_scenario_runs() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let after = readme
        .split("`--config SCENARIO.json`")
        .nth(1)
        .expect("the README documents --config");
    let block = after
        .split("```json\n")
        .nth(1)
        .unwrap()
        .split("\n```")
        .next()
        .unwrap();
    let config: imds_emulator::Config = serde_json::from_str(block).expect("a valid scenario");
    assert_eq!(config.instance.instance_id, "i-0123456789abcdef0");
    assert_eq!(config.timeline.len(), 1);
    let emu = imds_emulator::Emulator::start(config).await.unwrap();
    let sb = common::Sandbox::new();
    let url = emu.url();
    let out = common::run(sb.command(&["metadata", "--imds-endpoint", url.as_str()])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        sb.read("params.env").unwrap().lines().next(),
        Some("APP_PORT=\"8080\"")
    );
}
