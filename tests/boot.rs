//! The shipped units under a real systemd as PID 1 (systemd-nspawn --boot), installed by
//! scripts/install.sh into a Debian rootfs, with the IMDS emulator and moto on the host's
//! loopback (nspawn shares the host's network). Asserts from systemd's own timestamps and
//! the journal. The rootfs is built once with mmdebstrap and cached outside the repo.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::adversarial;
use common::moto::moto;
use imds_emulator::{Config, Emulator};

/// Debian bookworm minbase with systemd and CA certificates (as any image that reaches S3
/// over TLS has; the SDK asserts on an empty trust store in debug builds).
const ROOTFS_CACHE: &str = "/var/cache/bootstage-test/rootfs-bookworm-v2.tar";

/// The cached rootfs tarball, built on first use (about 25 s).
fn rootfs_tar() -> &'static Path {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if Path::new(ROOTFS_CACHE).exists() {
            return;
        }
        std::fs::create_dir_all("/var/cache/bootstage-test").unwrap();
        let partial = ROOTFS_CACHE.replace(".tar", ".partial.tar");
        let status = Command::new("mmdebstrap")
            .args([
                "--mode=root",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,ca-certificates",
                "bookworm",
                &partial,
            ])
            .status()
            .expect("mmdebstrap (scripts/install-test-deps.sh installs it)");
        assert!(status.success(), "mmdebstrap failed");
        std::fs::rename(&partial, ROOTFS_CACHE).unwrap();
    });
    Path::new(ROOTFS_CACHE)
}

/// A machine: a fresh rootfs with bootstage installed by scripts/install.sh.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(bootstage_env: &str) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(rootfs_tar())
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("scripts/install.sh")
            .args(["--binary", common::BIN])
            .env("DESTDIR", dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let m = Machine { dir };
        m.write("etc/bootstage/bootstage.env", bootstage_env);
        for (name, unit) in [
            ("test-app-launch.service", APP_LAUNCH),
            ("test-app-envfile.service", APP_ENVFILE),
            ("test-check.service", CHECK),
        ] {
            m.write(&format!("etc/systemd/system/{name}"), unit);
        }
        for app in ["test-app-launch.service", "test-app-envfile.service"] {
            let link = m
                .root()
                .join("etc/systemd/system/multi-user.target.wants")
                .join(app);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{app}"), link).unwrap();
        }
        m
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Boots to the checker, which powers the machine off; returns the results dir.
    fn boot(&self) -> Results {
        let results = tempfile::tempdir().unwrap();
        let mut child = Command::new("systemd-nspawn")
            .args(["-q", "--register=no", "--keep-unit", "--console=pipe", "-D"])
            .arg(self.root())
            .arg(format!("--bind={}:/results", results.path().display()))
            .args(["--boot", "systemd.wants=test-check.service"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("systemd-nspawn (scripts/install-test-deps.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.code(),
                    Some(0),
                    "the checker ends the boot with exit 0"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the boot did not finish in 150 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Results { dir: results }
    }
}

struct Results {
    dir: tempfile::TempDir,
}

impl Results {
    fn text(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// `systemctl show` properties of a unit, as the checker saved them.
    fn unit(&self, unit: &str) -> BTreeMap<String, String> {
        self.text(&format!("{unit}.show"))
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    fn monotonic(&self, unit: &str, property: &str) -> u64 {
        self.unit(unit)
            .get(property)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn env(&self, name: &str) -> BTreeMap<String, String> {
        std::fs::read(self.dir.path().join(name))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                String::from_utf8(e.to_vec())
                    .ok()?
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

const APP_LAUNCH: &str = "[Unit]
Requires=bootstage.target
After=bootstage.target
[Service]
Type=oneshot
ExecStart=/usr/bin/bootstage launch -- /bin/sh -c 'env -0 > /results/env-launch; cat /srv/app/config/app.conf > /results/app-conf'
";

const APP_ENVFILE: &str = "[Unit]
Requires=bootstage.target
After=bootstage.target
[Service]
Type=oneshot
EnvironmentFile=/run/bootstage/params.env
ExecStart=/bin/sh -c 'env -0 > /results/env-file'
";

const CHECK: &str = "[Unit]
After=test-app-launch.service test-app-envfile.service bootstage.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'systemctl show > /results/manager.show; for u in bootstage-metadata.service bootstage-s3-sync.service bootstage.target test-app-launch.service test-app-envfile.service bootstage-failure@bootstage-metadata.service.service bootstage-failure@bootstage-s3-sync.service.service; do systemctl show $u > /results/$u.show; done; journalctl -b --no-pager -o short-monotonic > /results/journal; ls /run/bootstage > /results/run-bootstage; systemctl --no-block exit 0'
";

fn user_data(values: &[String], sync_from: &str) -> String {
    let mut params: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("K{i:04}"), v.clone().into()))
        .collect();
    params.insert(
        "bootstage".into(),
        serde_json::json!({"sync": [{"from": sync_from, "to": "/srv/app/config"}]}),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(serde_json::Value::Object(params).to_string().as_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

fn bootstage_env(imds: &str) -> String {
    let moto_env: Vec<String> = moto()
        .env()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let moto_env: Vec<String> = moto_env
        .into_iter()
        .filter(|l| !l.starts_with("AWS_EC2_METADATA_DISABLED"))
        .collect();
    format!(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\n{}\n",
        moto_env.join("\n")
    )
}

/// All boots run one after another: each needs most of the machine.
#[tokio::test(flavor = "multi_thread")]
async fn boots_under_systemd() {
    let _ = rootfs_tar();
    let values = adversarial::values(300, 2026);
    let bucket = moto().bucket("boot-config").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    bucket.put("app/nested/deep.txt", "deep\n").await;

    // 1. A normal boot: hard order, exact values through EnvironmentFile= and launch.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values, "s3://boot-config/app/")),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()));
    let verify = Command::new("systemd-analyze")
        .arg(format!("--root={}", machine.root().display()))
        .arg("verify")
        .args(
            [
                "bootstage-metadata.service",
                "bootstage-s3-sync.service",
                "bootstage.target",
                "bootstage-failure@x.service",
            ]
            .map(|u| {
                machine
                    .root()
                    .join("usr/lib/systemd/system")
                    .join(u.replace("@x", "@"))
            }),
        )
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    let r = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let (first, machine) = r;
    let md_ready = first.monotonic(
        "bootstage-metadata.service",
        "ActiveEnterTimestampMonotonic",
    );
    let sync_start = first.monotonic(
        "bootstage-s3-sync.service",
        "ExecMainStartTimestampMonotonic",
    );
    let sync_ready = first.monotonic("bootstage-s3-sync.service", "ActiveEnterTimestampMonotonic");
    let app_start = first.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic");
    let journal = first.text("journal");
    assert!(
        md_ready > 0 && sync_start > 0 && sync_ready > 0 && app_start > 0,
        "{journal}"
    );
    assert!(
        md_ready <= sync_start,
        "s3-sync started before metadata was ready"
    );
    assert!(
        sync_ready <= app_start,
        "the app started before s3-sync was ready"
    );
    // A container shares the host's monotonic clock: count from its systemd's start.
    let booted = first.monotonic("manager", "UserspaceTimestampMonotonic");
    assert!(booted > 0 && booted <= md_ready);
    let secs = |t: u64| (t - booted) as f64 / 1e6;
    eprintln!(
        "boot (systemd start) → metadata ready {:.2} s → s3-sync ready {:.2} s → app start {:.2} s",
        secs(md_ready),
        secs(sync_ready),
        secs(app_start)
    );
    assert_eq!(first.text("app-conf"), "port=8080\n");
    for file in ["env-launch", "env-file"] {
        let env = first.env(file);
        for (i, want) in values.iter().enumerate() {
            assert_eq!(env.get(&format!("K{i:04}")), Some(want), "{file}: K{i:04}");
        }
    }

    // 4. The same disk again: idempotent, nothing downloaded.
    let mark = moto().mark();
    let (second, machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    assert!(
        second.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic") > 0,
        "{}",
        second.text("journal")
    );
    assert_eq!(
        second.env("env-launch").get("K0001"),
        first.env("env-launch").get("K0001")
    );
    assert_eq!(second.text("app-conf"), "port=8080\n");
    assert_eq!(
        moto().counts("boot-config", mark).get,
        0,
        "second boot downloads nothing"
    );
    drop(machine);

    // 2. No user-data: metadata fails with 66, no restart, OnFailure= runs, no app.
    let empty = Emulator::start(Config::default()).await.unwrap();
    let machine = Machine::new(&bootstage_env(&empty.url()));
    let (r, _m) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let md = r.unit("bootstage-metadata.service");
    assert_eq!(
        md.get("ExecMainStatus").map(String::as_str),
        Some("66"),
        "{}",
        r.text("journal")
    );
    assert_eq!(md.get("NRestarts").map(String::as_str), Some("0"));
    assert_eq!(
        r.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic"),
        0,
        "the app never started"
    );
    assert_eq!(
        r.monotonic(
            "test-app-envfile.service",
            "ExecMainStartTimestampMonotonic"
        ),
        0
    );
    assert!(
        r.text("run-bootstage")
            .contains("failed.bootstage-metadata.service"),
        "OnFailure= ran: {}",
        r.text("run-bootstage")
    );
    assert!(r.text("journal").contains("this instance has no user-data"));

    // 3. S3 failure: the app never starts.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values[..5], "s3://no-such-bucket/app/")),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()));
    let (r, _m) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    assert_eq!(
        r.unit("bootstage-s3-sync.service")
            .get("ExecMainStatus")
            .map(String::as_str),
        Some("77"),
        "{}",
        r.text("journal")
    );
    assert_eq!(
        r.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic"),
        0,
        "the app never started"
    );
    assert!(
        r.text("run-bootstage")
            .contains("failed.bootstage-s3-sync.service")
    );

    // 5. The kill switch: stages skipped, IMDS never asked, the app starts without parameters.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values[..5], "s3://boot-config/app/")),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()));
    machine.write("etc/bootstage/disabled", "");
    let (r, _m) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    assert_eq!(
        r.unit("bootstage-metadata.service")
            .get("ConditionResult")
            .map(String::as_str),
        Some("no")
    );
    assert!(
        r.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic") > 0,
        "{}",
        r.text("journal")
    );
    let env = r.env("env-launch");
    assert!(
        !env.contains_key("K0000") && !env.contains_key("BOOTSTAGE_INSTANCE_ID"),
        "no parameters when disabled"
    );
    assert!(
        r.text("journal")
            .contains("bootstage is disabled (/etc/bootstage/disabled exists): running no stage")
    );
    assert!(
        emu.requests().is_empty(),
        "IMDS was asked: {:?}",
        emu.requests()
    );
}
