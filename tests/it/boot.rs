//! The shipped units under a real systemd as PID 1 (systemd-nspawn --boot), installed from
//! the Debian package (scripts/build-deb.sh, of the binary under test) into a Debian rootfs
//! by the guest's own dpkg, with the IMDS emulator and moto on the host's
//! loopback (nspawn shares the host's network). Asserts from systemd's own timestamps and
//! the journal. The rootfs is built once with mmdebstrap and cached outside the repo.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::adversarial;
use common::moto::moto;
use common::webhook::Webhook;
use imds_emulator::{Config, Emulator};

/// Debian bookworm minbase with systemd and CA certificates (as any image that reaches S3
/// over TLS has; the SDK asserts on an empty trust store in debug builds).
const ROOTFS_CACHE: &str = "/var/cache/bootstage-test/rootfs-bookworm-v2.tar";

/// The cached rootfs tarball, built on first use (about 25 s).
pub(crate) fn rootfs_tar() -> &'static Path {
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

/// The .deb of the binary under test, built once.
fn deb() -> &'static Path {
    static DEB: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    let (_, path) = DEB.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let status = Command::new("scripts/build-deb.sh")
            .arg("--debug-build")
            .arg("--output")
            .arg(out.path())
            .status()
            .expect("scripts/build-deb.sh (cargo-deb: scripts/install-test-deps.sh)");
        assert!(status.success(), "building the .deb failed");
        let deb = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("a .deb");
        (out, deb)
    });
    path
}

/// A machine: a fresh rootfs with the bootstage package installed.
pub(crate) struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    pub(crate) fn new(bootstage_env: &str, notify_url: &str) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(rootfs_tar())
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let cgroup = Cgroup::new();
        let install = cgroup
            .nspawn()
            .args(["-q", "--register=no", "--keep-unit", "--console=pipe", "-D"])
            .arg(dir.path())
            .arg(format!("--bind-ro={}:/tmp/bootstage.deb", deb().display()))
            .args(["dpkg", "-i", "/tmp/bootstage.deb"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "dpkg -i: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        drop(cgroup);
        // deb-systemd-helper links to /lib/… or /usr/lib/… (one place on merged-/usr).
        let link = std::fs::read_link(
            dir.path()
                .join("etc/systemd/system/multi-user.target.wants/bootstage.target"),
        )
        .expect("installing the package enables bootstage.target");
        assert!(
            link.ends_with("lib/systemd/system/bootstage.target"),
            "{}",
            link.display()
        );
        let m = Machine { dir };
        // The guest shares the host's network (it reaches the emulators on loopback): its
        // apt timers must never reach a mirror during a test.
        for timer in ["apt-daily.timer", "apt-daily-upgrade.timer"] {
            let _ = std::fs::remove_file(
                m.root()
                    .join("etc/systemd/system/timers.target.wants")
                    .join(timer),
            );
        }
        m.write_env(bootstage_env);
        m.write(
            "etc/bootstage/notify.json",
            &serde_json::json!({"url": notify_url, "ready": true}).to_string(),
        );
        m.write("etc/bootstage/lifecycle.json", LIFECYCLE);
        for (name, unit) in [
            ("test-app-launch.service", APP_LAUNCH),
            ("test-app-envfile.service", APP_ENVFILE),
            ("test-status-wait.service", STATUS_WAIT),
            ("test-check.service", CHECK),
        ] {
            m.write(&format!("etc/systemd/system/{name}"), unit);
        }
        m.hook(
            "per-instance.d/10-once",
            "echo \"pi $BOOTSTAGE_INSTANCE_ID\" >> /results/hooks.log; printenv K0001 > /results/hook-K0001",
        );
        m.hook(
            "per-boot.d/10-every",
            "echo \"pb $BOOTSTAGE_INSTANCE_ID\" >> /results/hooks.log; bootstage status --json > /results/status-during-hooks.json || [ $? = 2 ]",
        );
        // The shipped examples, as shipped: an app as root, and one under its own user.
        for example in ["myapp.service", "myapp-user.service"] {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("systemd/examples")
                    .join(example),
            )
            .unwrap();
            m.write(&format!("etc/systemd/system/{example}"), &text);
        }
        let passwd = m.root().join("etc/passwd");
        let mut users = std::fs::read_to_string(&passwd).unwrap();
        users.push_str("app:x:1001:1001::/nonexistent:/usr/sbin/nologin\n");
        std::fs::write(&passwd, users).unwrap();
        let group = m.root().join("etc/group");
        let mut groups = std::fs::read_to_string(&group).unwrap();
        groups.push_str("app:x:1001:\n");
        std::fs::write(&group, groups).unwrap();
        m.write("usr/local/bin/myapp", MYAPP);
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                m.root().join("usr/local/bin/myapp"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        for app in [
            "test-app-launch.service",
            "test-app-envfile.service",
            "test-status-wait.service",
            "myapp.service",
            "myapp-user.service",
        ] {
            let link = m
                .root()
                .join("etc/systemd/system/multi-user.target.wants")
                .join(app);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{app}"), link).unwrap();
        }
        m
    }

    /// Leaves off the test units and examples `new` enables, for a test that brings its
    /// own app and checker.
    pub(crate) fn without_test_units(&self) {
        let wants = self
            .root()
            .join("etc/systemd/system/multi-user.target.wants");
        for unit in [
            "test-app-launch.service",
            "test-app-envfile.service",
            "test-status-wait.service",
            "myapp.service",
            "myapp-user.service",
        ] {
            std::fs::remove_file(wants.join(unit)).unwrap();
        }
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn hook(&self, rel: &str, script: &str) {
        let rel = format!("etc/bootstage/hooks/{rel}");
        self.write(&rel, &format!("#!/bin/sh\nset -e\n{script}\n"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.root().join(rel),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The image's `/etc/bootstage/bootstage.env`: `env` after the lines that keep every
    /// cloud's metadata service on a closed loopback port ([`LOOPBACK_ONLY`]).
    pub(crate) fn write_env(&self, env: &str) {
        self.write(
            "etc/bootstage/bootstage.env",
            &format!("{LOOPBACK_ONLY}{env}"),
        );
    }

    /// The last lines of the latest boot's journal, read from the image's disk (the
    /// machine may still run): what a boot that hung or failed shows of why.
    fn journal_end(&self) -> String {
        let out = Command::new("journalctl")
            .arg("--directory")
            .arg(self.root().join("var/log/journal"))
            .args(["-b", "-n", "150", "-o", "short-monotonic", "--no-pager"])
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("journalctl: {e}"),
        }
    }

    /// Boots to the checker, which powers the machine off; returns the results dir.
    pub(crate) fn boot(&self) -> Results {
        self.boot_with(|_| {})
    }

    /// Boots as `boot` does, running `during(results dir)` on this thread while the
    /// machine runs.
    pub(crate) fn boot_with(&self, during: impl FnOnce(&Path)) -> Results {
        let results = tempfile::tempdir().unwrap();
        // The example app under its own user writes its results too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(results.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        // Dropped after the machine (declared before it): its cgroup goes once it is empty.
        let cgroup = Cgroup::new();
        let child = cgroup
            .nspawn()
            .args(["-q", "--register=no", "--keep-unit", "--console=pipe", "-D"])
            .arg(self.root())
            .arg(format!("--bind={}:/results", results.path().display()))
            .args(["--boot", "systemd.wants=test-check.service"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("/bin/sh");
        let mut child = Running(child);
        let child = &mut child.0;
        during(results.path());
        let deadline = std::time::Instant::now() + Duration::from_secs(150);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.code(),
                    Some(0),
                    "the checker ends the boot with exit 0; the journal's end:\n{}",
                    self.journal_end()
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the boot did not finish in 150 s; the journal's end:\n{}",
                self.journal_end()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A checker that gave up waiting says so: what it saved then is not the state it
        // waited for, and the boot took its whole patience.
        assert!(
            !results.path().join("checker-timeout").exists(),
            "the checker timed out waiting for {}; the journal's end:\n{}",
            std::fs::read_to_string(results.path().join("checker-timeout")).unwrap_or_default(),
            self.journal_end()
        );
        Results { dir: results }
    }
}

/// A cgroup of one machine's own, in which its systemd-nspawn runs. With `--keep-unit` (no
/// systemd on the host to ask for a scope) nspawn puts the container's units below the
/// cgroup it was started in: started in the same one, machines booted at once shared
/// `payload/system.slice/<unit>`, and one machine's systemd removed or emptied a unit's
/// cgroup while another's was starting that unit (seen: "Failed to attach to cgroup
/// /system.slice/bootstage-hooks.service: No such file or directory", status 219/CGROUP,
/// in about one run in ten of the booted tests side by side, and in CI).
struct Cgroup(Vec<std::path::PathBuf>);

impl Cgroup {
    /// A new cgroup in each hierarchy nspawn reads its own from: cgroup v1's named systemd
    /// one and, beside it (hybrid) or alone (v2), the unified one.
    fn new() -> Cgroup {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bootstage-test-{}-{n}", std::process::id());
        let has = |root: &str| Path::new(root).join("cgroup.procs").exists();
        let mut roots: Vec<&str> = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
            .into_iter()
            .filter(|r| has(r))
            .collect();
        if roots.is_empty() && has("/sys/fs/cgroup") {
            roots.push("/sys/fs/cgroup");
        }
        assert!(
            !roots.is_empty(),
            "no cgroup hierarchy under /sys/fs/cgroup"
        );
        let dirs = roots
            .into_iter()
            .map(|root| {
                let dir = Path::new(root).join(&name);
                if let Err(e) = std::fs::create_dir(&dir) {
                    panic!("a machine's own cgroup {}: {e}", dir.display());
                }
                dir
            })
            .collect();
        Cgroup(dirs)
    }

    /// systemd-nspawn, started in these cgroups: a shell moves itself there, then becomes
    /// nspawn (the same process). nspawn's arguments follow.
    fn nspawn(&self) -> Command {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(
                r#"n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n - 1)); done
exec systemd-nspawn "$@""#,
            )
            .arg("sh")
            .arg(self.0.len().to_string())
            .args(&self.0);
        command
    }
}

impl Drop for Cgroup {
    /// Removes the cgroups and what the machine's systemd made below them, deepest first
    /// (a cgroup is removed with rmdir, once it has no process and no child).
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for dir in &self.0 {
            remove(dir);
        }
    }
}

/// A booted machine that a failed assertion must not leave running: dropped while its
/// systemd-nspawn still runs, the container's init is killed (which ends every process in
/// its PID namespace), then systemd-nspawn, and it is reaped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let nspawn = self.0.id();
            let children = format!("/proc/{nspawn}/task/{nspawn}/children");
            for pid in std::fs::read_to_string(children)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(pid) = pid.parse() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) struct Results {
    pub(crate) dir: tempfile::TempDir,
}

impl Results {
    /// A file the boot left in /results. Its absence fails the test: an empty string would
    /// let a check that something did not happen pass on a boot that never got that far.
    #[track_caller]
    pub(crate) fn text(&self, name: &str) -> String {
        match std::fs::read_to_string(self.dir.path().join(name)) {
            Ok(text) => text,
            Err(e) => panic!("the boot left no /results/{name}: {e}"),
        }
    }

    /// `systemctl show` properties of a unit, as the checker saved them.
    #[track_caller]
    pub(crate) fn unit(&self, unit: &str) -> BTreeMap<String, String> {
        self.text(&format!("{unit}.show"))
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// A timestamp property of a unit (0: it did not happen). A unit or property that
    /// `systemctl show` did not give fails the test rather than read as 0.
    #[track_caller]
    pub(crate) fn monotonic(&self, unit: &str, property: &str) -> u64 {
        let value = self.unit(unit).get(property).cloned();
        match value.as_deref().map(str::parse) {
            Some(Ok(n)) => n,
            _ => panic!("{unit}: no numeric {property} ({value:?})"),
        }
    }

    /// `unit` exists in the booted system and systemd never started its main process, and
    /// says why: a job for it failed on a dependency. A unit systemd does not know (a
    /// renamed one, say) also has a start time of 0, so that alone proves nothing.
    #[track_caller]
    fn never_started(&self, unit: &str) {
        let show = self.unit(unit);
        let journal = self.text("journal");
        assert_eq!(
            show.get("LoadState").map(String::as_str),
            Some("loaded"),
            "{unit}: {show:?}"
        );
        assert_eq!(
            self.monotonic(unit, "ExecMainStartTimestampMonotonic"),
            0,
            "{unit} started: {journal}"
        );
        assert!(
            journal.contains(&format!("Dependency failed for {unit}")),
            "no job for {unit} failed on a dependency: {journal}"
        );
    }

    /// A NUL-separated environment the boot left in /results (`env -0`); its absence fails.
    #[track_caller]
    pub(crate) fn env(&self, name: &str) -> BTreeMap<String, String> {
        let bytes = match std::fs::read(self.dir.path().join(name)) {
            Ok(bytes) => bytes,
            Err(e) => panic!("the boot left no /results/{name}: {e}"),
        };
        bytes
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

/// What the shipped example units start: records its arguments, environment, the secret
/// it got as a credential, and whether it can read /run/bootstage, by uid.
const MYAPP: &str = "#!/bin/sh
u=$(id -u)
env -0 > /results/myapp-$u-env
[ -z \"$CREDENTIALS_DIRECTORY\" ] || cat \"$CREDENTIALS_DIRECTORY/db.password\" > /results/myapp-$u-secret
if cat /run/bootstage/params.env > /dev/null 2>&1; then echo readable; else echo denied; fi > /results/myapp-$u-run
printf '%s\\n' \"$@\" > /results/myapp-$u-args
";

/// A long-running app that the watch-mode drop-in reloads after a change.
const APP_WATCHED: &str = "[Unit]
Requires=bootstage.target
After=bootstage.target
[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/sh -c 'cat /srv/app/config/app.conf >> /results/reloaded'
[Install]
WantedBy=multi-user.target
";

/// The shipped watch drop-in's ExecStart, with a 1 s interval (which `bootstage.watch`
/// may replace) and the test app to reload.
const WATCH_FAST: &str = "[Service]
ExecStart=
ExecStart=/usr/bin/bootstage s3-sync --watch 1s --on-change \"systemctl reload test-app-watched.service\"
";

/// Started with the boot, unordered: waits for the outcome the way an operator's script would.
const STATUS_WAIT: &str = "[Service]
Type=oneshot
ExecStart=/bin/sh -c 'bootstage status --wait --json > /results/wait.json; echo $? > /results/wait.rc'
";

/// The first lines of every booted image's bootstage.env: the provider is EC2's whatever
/// the host's DMI says (nspawn shows the host's /sys, and a CI runner on Compute Engine or
/// Azure would name its cloud), and the other clouds' metadata services are a closed
/// loopback port, as the sandbox has them: a unit never reaches a real address.
const LOOPBACK_ONLY: &str = "BOOTSTAGE_PROVIDER=aws\nGCE_METADATA_HOST=127.0.0.1:9\nBOOTSTAGE_AZURE_IMDS=http://127.0.0.1:9\nBOOTSTAGE_AZURE_WIRESERVER=http://127.0.0.1:9\nBOOTSTAGE_OPENSTACK_METADATA=http://127.0.0.1:9\n";

/// The lines of a boot's journal about its notices (the units that send them, and what
/// they said): what a test waiting for a notice that never came prints, short enough for
/// the end of a CI log.
pub(crate) fn notice_lines(journal: &str) -> String {
    journal
        .lines()
        .filter(|l| {
            ["bootstage-ready", "bootstage-failure", "notice", "notify"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lifecycle emulator's URL, for `bootstage_env`.
static ORCHESTRATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The image's lifecycle settings: every machine tells the group and the stack.
const LIFECYCLE: &str = r#"{"asg": {"hook": "launch", "group": "web"},
 "cloudformation": {"stack": "web-stack", "resource": "Group"}}"#;

/// The instance of the boot whose metadata stage fails.
const FAILED_ID: &str = "i-0000000000000bad0";

/// Runs last (after the apps, the notices and the waiter), saves what the host asserts on,
/// and ends the boot. Where a reload is awaited, it waits too for the watching s3-sync to
/// be back from `reloading` (its READY=1 follows the `--on-change` hook that the reload
/// came from: saved in between, the unit read `reloading`, once in nine runs).
const CHECK: &str = "[Unit]
After=test-app-launch.service test-app-envfile.service test-status-wait.service myapp.service myapp-user.service bootstage.target bootstage-ready.service bootstage-failure@bootstage-metadata.service.service bootstage-failure@bootstage-s3-sync.service.service bootstage-lifecycle.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'if [ -e /etc/test-expect-myapp ]; then for f in myapp-0-args myapp-1001-args; do i=0; while [ ! -e /results/$f ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 300 ] || echo $f > /results/checker-timeout; done; fi; if [ -e /etc/test-wait-for-reload ]; then i=0; while [ ! -s /results/reloaded ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 300 ] || echo reloaded > /results/checker-timeout; i=0; while [ \"$(systemctl show -p ActiveState --value bootstage-s3-sync.service)\" = reloading ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 300 ] || echo s3-sync-reloading > /results/checker-timeout; fi; systemctl show > /results/manager.show; for u in bootstage-lifecycle.service bootstage-ready.service myapp.service myapp-user.service bootstage-metadata.service bootstage-s3-sync.service bootstage-hooks.service bootstage.target test-app-launch.service test-app-envfile.service test-status-wait.service bootstage-failure@bootstage-metadata.service.service bootstage-failure@bootstage-s3-sync.service.service; do systemctl show $u > /results/$u.show; done; journalctl -b --no-pager -o short-monotonic > /results/journal; bootstage status --json > /results/status.json; echo $? > /results/status.rc; systemctl --no-block exit 0'
";

fn user_data(values: &[String], sync_from: &str) -> String {
    encode(params(values, sync_from))
}

/// The parameters `user_data` encodes.
fn params(values: &[String], sync_from: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut params: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("K{i:04}"), v.clone().into()))
        .collect();
    params.insert(
        "bootstage".into(),
        serde_json::json!({"sync": [{"from": sync_from, "to": "/srv/app/config"}]}),
    );
    // For the shipped examples: a port on the command line, a secret from SSM.
    params.insert("app".into(), serde_json::json!({"port": 8080}));
    params.insert(
        "db".into(),
        serde_json::json!({"password": {"ssm": "/boot/db-password"}}),
    );
    params
}

/// Parameters as user-data: gzipped JSON in base64.
fn encode(params: serde_json::Map<String, serde_json::Value>) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(serde_json::Value::Object(params).to_string().as_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
}

/// The environment every machine gets: IMDS, moto, and the lifecycle emulator for Auto
/// Scaling and CloudFormation.
fn bootstage_env(imds: &str) -> String {
    let orch = ORCHESTRATOR
        .get()
        .expect("the lifecycle emulator is started first");
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
        "AWS_EC2_METADATA_SERVICE_ENDPOINT={imds}\nBOOTSTAGE_USER_DATA_WAIT=2s\nBOOTSTAGE_TIMEOUT=20s\n{}\nAWS_ENDPOINT_URL_AUTO_SCALING={orch}\nAWS_ENDPOINT_URL_CLOUDFORMATION={orch}\n",
        moto_env.join("\n")
    )
}

/// The lifecycle emulator's calls about one instance (by InstanceId, or UniqueId).
fn calls_of(orch: &lifecycle_emulator::Emulator, id: &str) -> Vec<lifecycle_emulator::Call> {
    orch.calls()
        .into_iter()
        .filter(|c| {
            c.params
                .get("InstanceId")
                .or(c.params.get("UniqueId"))
                .map(String::as_str)
                == Some(id)
        })
        .collect()
}

/// The completions and stack signals among `calls`, as `Action RESULT status`, sorted
/// (they go out at once).
fn final_signals(calls: &[lifecycle_emulator::Call]) -> Vec<String> {
    let mut signals: Vec<String> = calls
        .iter()
        .filter(|c| {
            matches!(
                c.action.as_str(),
                "CompleteLifecycleAction" | "SignalResource"
            )
        })
        .map(|c| {
            let result = c
                .params
                .get("LifecycleActionResult")
                .or(c.params.get("Status"));
            format!("{} {} {}", c.action, result.unwrap(), c.status)
        })
        .collect();
    signals.sort();
    signals
}

/// All boots run one after another: each needs most of the machine.
#[tokio::test(flavor = "multi_thread")]
async fn boots_under_systemd() {
    let _ = rootfs_tar();
    // Every instance of these boots starts in the group's launch hook when the test starts
    // (a heartbeat timeout that outlasts building the machines); the stack's resource
    // takes a signal from each.
    let orch = lifecycle_emulator::Emulator::start(lifecycle_emulator::Config {
        groups: vec![lifecycle_emulator::Group {
            name: "web".into(),
            hook: "launch".into(),
            heartbeat_timeout: 900.0,
            default_result: "ABANDON".into(),
            instances: vec![
                "i-0123456789abcdef0".into(),
                "i-0fedcba9876543210".into(),
                FAILED_ID.into(),
            ],
            ..Default::default()
        }],
        stacks: vec![lifecycle_emulator::Stack {
            name: "web-stack".into(),
            resources: vec!["Group".into()],
            count: 10,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    ORCHESTRATOR.set(orch.url()).unwrap();
    let values = adversarial::values(300, 2026);
    let hook = Webhook::start(&[]).await;
    let bucket = moto().bucket("boot-config").await;
    bucket.put("app/app.conf", "port=8080\n").await;
    const SECRET: &str = "boot-secret: $HOME \"q\" `x`";
    moto()
        .ssm()
        .await
        .put_parameter()
        .name("/boot/db-password")
        .value(SECRET)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    bucket.put("app/nested/deep.txt", "deep\n").await;

    // 1. A normal boot: hard order, exact values through EnvironmentFile= and launch.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values, "s3://boot-config/app/").into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()), &hook.url);
    machine.write("etc/test-expect-myapp", "");
    let verify = Command::new("systemd-analyze")
        .arg(format!("--root={}", machine.root().display()))
        .arg("verify")
        // Its man: check looks on the host, not under --root; the page is in the rootfs.
        .arg("--man=no")
        .args(
            [
                "bootstage-metadata.service",
                "bootstage-s3-sync.service",
                "bootstage-hooks.service",
                "bootstage.target",
                "bootstage-ready.service",
                "bootstage-failure@x.service",
                "bootstage-lifecycle.service",
                "bootstage-in-service.service",
                "bootstage-in-service.target",
                "bootstage-resume.service",
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

    // The shipped examples, as shipped. As root: the parameter reaches the command line
    // through the shell ($$ in the unit), not systemd's own (empty) expansion.
    assert_eq!(first.text("myapp-0-args"), "--port\n8080\n", "{journal}");
    // Under User=app with LoadCredential=: every parameter exactly through launch, the
    // SSM secret as a credential file too, and no way into /run/bootstage.
    let user_env = first.env("myapp-1001-env");
    for (i, want) in values.iter().enumerate() {
        assert_eq!(
            user_env.get(&format!("K{i:04}")),
            Some(want),
            "myapp-user: K{i:04}"
        );
    }
    assert_eq!(
        user_env.get("DB_PASSWORD").map(String::as_str),
        Some(SECRET)
    );
    assert_eq!(first.text("myapp-1001-secret"), SECRET);
    assert_eq!(first.text("myapp-1001-run"), "denied\n");
    assert_eq!(
        first.text("myapp-1001-args"),
        "\n",
        "printf with no argument"
    );
    // The stages and the notice units run hardened (bootstage-lifecycle.service runs the
    // drain's root hooks: unsandboxed as bootstage-hooks.service, boot_drain.rs checks).
    for unit in [
        "bootstage-metadata.service",
        "bootstage-s3-sync.service",
        "bootstage-ready.service",
    ] {
        let show = first.unit(unit);
        assert_eq!(
            show.get("UMask").map(String::as_str),
            Some("0077"),
            "{unit}"
        );
        assert_eq!(
            show.get("ProtectProc").map(String::as_str),
            Some("invisible"),
            "{unit}"
        );
        assert!(
            show.get("SystemCallFilter")
                .is_some_and(|f| f.contains("chown")),
            "{unit}: {:?}",
            show.get("SystemCallFilter")
        );
    }
    assert_eq!(
        first
            .unit("bootstage-ready.service")
            .get("Result")
            .map(String::as_str),
        Some("success")
    );
    for file in ["env-launch", "env-file"] {
        let env = first.env(file);
        for (i, want) in values.iter().enumerate() {
            assert_eq!(env.get(&format!("K{i:04}")), Some(want), "{file}: K{i:04}");
        }
    }

    // Hooks: per-instance and per-boot, with the parameters; status while they ran.
    let first_id = "i-0123456789abcdef0";
    assert_eq!(
        first.text("hooks.log"),
        format!("pi {first_id}\npb {first_id}\n")
    );
    assert_eq!(first.text("hook-K0001"), format!("{}\n", values[1]));
    let during: serde_json::Value =
        serde_json::from_str(&first.text("status-during-hooks.json")).unwrap();
    assert_eq!(
        common::states(&during["stages"]),
        ["done", "done", "running"]
    );
    assert_eq!(during["state"], "running");
    let after: serde_json::Value = serde_json::from_str(&first.text("status.json")).unwrap();
    assert_eq!(common::states(&after["stages"]), ["done", "done", "done"]);
    assert_eq!(first.text("status.rc"), "0\n");
    // The waiter, started with the boot, returned 0 as the last stage finished.
    assert_eq!(first.text("wait.rc"), "0\n", "{journal}");
    let waited: serde_json::Value = serde_json::from_str(&first.text("wait.json")).unwrap();
    assert_eq!(waited["state"], "done");
    let hooks_ready = first.monotonic("bootstage-hooks.service", "ActiveEnterTimestampMonotonic");
    let wait_exit = first.monotonic("test-status-wait.service", "ExecMainExitTimestampMonotonic");
    assert!(
        wait_exit > first.monotonic("bootstage-hooks.service", "ExecMainStartTimestampMonotonic")
    );
    eprintln!(
        "status --wait exited {:+.3} s from the hooks stage's READY",
        (wait_exit as f64 - hooks_ready as f64) / 1e6
    );
    let notices = hook.wait_for(1).await;
    assert_eq!(notices[0].body["event"], "ready");
    assert_eq!(notices[0].body["instance"]["instance_id"], first_id);
    assert_eq!(
        common::states(&notices[0].body["timings"]),
        ["done", "done", "done"]
    );
    // The orchestrator: heartbeats while the boot ran, then exactly one CONTINUE
    // and one SUCCESS, after systemd reached bootstage.target.
    let target = first.monotonic("bootstage.target", "ActiveEnterTimestampMonotonic");
    let calls = calls_of(&orch, first_id);
    let signals = final_signals(&calls);
    assert_eq!(
        signals,
        [
            "CompleteLifecycleAction CONTINUE 200",
            "SignalResource SUCCESS 200"
        ],
        "{journal}"
    );
    let (beats, ends): (Vec<_>, Vec<_>) = calls
        .iter()
        .partition(|c| c.action == "RecordLifecycleActionHeartbeat");
    assert!(!beats.is_empty(), "no heartbeat: {journal}");
    for end in &ends {
        assert!(
            end.monotonic_usec > target,
            "{} before bootstage.target",
            end.action
        );
        assert!(beats.iter().all(|b| b.monotonic_usec < end.monotonic_usec));
    }
    assert_eq!(
        first
            .unit("bootstage-lifecycle.service")
            .get("Result")
            .map(String::as_str),
        Some("success")
    );

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
    // It did sync (one LIST), and downloaded nothing.
    let counts = moto().counts("boot-config", mark);
    assert!(
        counts.list >= 1 && counts.get == 0,
        "second boot lists and downloads nothing: {counts:?}"
    );
    assert_eq!(
        second.text("hooks.log"),
        format!("pb {first_id}\n"),
        "per-instance hooks ran once for this instance"
    );
    let notices = hook
        .wait_for_else(2, || notice_lines(&second.text("journal")))
        .await;
    assert_eq!(notices[1].body["event"], "ready");

    // 6. That disk as an image booted by another instance: its markers do not count. S3 is
    // down for its first 6 requests, two passes of the SDK's 3 attempts: the stage syncs again
    // within its one start (no Restart=, which would leave the app down), and the boot
    // ends ready, with no failure notice.
    let other = Emulator::start(Config {
        user_data: Some(user_data(&values, "s3://boot-config/app/").into()),
        instance: imds_emulator::Instance {
            instance_id: "i-0fedcba9876543210".into(),
            ..Default::default()
        },
        ..Config::default()
    })
    .await
    .unwrap();
    let down = common::faults::start(
        &moto().url,
        common::faults::Faults {
            unavailable: std::sync::atomic::AtomicUsize::new(6),
            ..Default::default()
        },
    )
    .await;
    // Only S3 through the proxy: the metadata stage's SSM reference goes to moto.
    let env = format!(
        "{}AWS_ENDPOINT_URL_S3={}\n",
        bootstage_env(&other.url()),
        down.url
    );
    machine.write_env(&env);
    let (third, machine) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    let injected = down
        .faults
        .injected
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(injected, 6, "{}", third.text("journal"));
    let sync = third.unit("bootstage-s3-sync.service");
    assert_eq!(sync.get("NRestarts").map(String::as_str), Some("0"));
    assert!(third.text("journal").contains("syncing again in"));
    assert!(
        third.monotonic("test-app-launch.service", "ExecMainStartTimestampMonotonic") > 0,
        "the app started"
    );
    assert_eq!(
        third.text("hooks.log"),
        "pi i-0fedcba9876543210\npb i-0fedcba9876543210\n",
        "{}",
        third.text("journal")
    );
    let notice = hook
        .wait_for_else(3, || notice_lines(&third.text("journal")))
        .await[2]
        .body
        .clone();
    assert_eq!(notice["event"], "ready", "{notice}");
    assert_eq!(notice["instance"]["instance_id"], "i-0fedcba9876543210");
    drop(machine);

    // 2. No user-data: metadata fails with 66, no restart, OnFailure= runs, no app.
    let empty = Emulator::start(Config {
        instance: imds_emulator::Instance {
            instance_id: FAILED_ID.into(),
            ..Default::default()
        },
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&empty.url()), &hook.url);
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
    r.never_started("test-app-launch.service");
    r.never_started("test-app-envfile.service");
    let received = hook.wait_for(4).await[3].clone();
    let notice = received.body.clone();
    assert_eq!(
        notice["event"], "failure",
        "OnFailure= sent the notice: {notice}"
    );
    assert_eq!(notice["unit"], "bootstage-metadata.service");
    assert_eq!(notice["stage"], "metadata");
    assert_eq!(notice["exit_code"], 66);
    assert!(
        notice["error"]
            .as_str()
            .unwrap()
            .starts_with("this instance has no user-data")
    );
    assert_eq!(r.text("status.rc"), "1\n");
    assert_eq!(r.text("wait.rc"), "1\n");
    let status: serde_json::Value = serde_json::from_str(&r.text("status.json")).unwrap();
    assert_eq!(
        common::states(&status["stages"]),
        ["failed", "pending", "pending"]
    );
    assert!(r.text("journal").contains("this instance has no user-data"));
    // The orchestrator, from the image's settings (no parameters): ABANDON and FAILURE,
    // after the metadata stage failed and after the failure notice arrived.
    let failed_at = r.monotonic(
        "bootstage-metadata.service",
        "ExecMainExitTimestampMonotonic",
    );
    let ends: Vec<_> = calls_of(&orch, FAILED_ID)
        .into_iter()
        .filter(|c| c.action != "RecordLifecycleActionHeartbeat")
        .collect();
    let signals = final_signals(&ends);
    assert_eq!(
        signals,
        [
            "CompleteLifecycleAction ABANDON 200",
            "SignalResource FAILURE 200"
        ],
        "{}",
        r.text("journal")
    );
    for end in &ends {
        assert!(failed_at > 0 && end.monotonic_usec > failed_at);
        assert!(
            end.monotonic_usec > received.monotonic_usec,
            "{} before the notice",
            end.action
        );
    }
    let outcome = orch.actions()[FAILED_ID].outcome.clone().unwrap();
    assert_eq!(
        (outcome.result.as_str(), outcome.by.as_str()),
        ("ABANDON", "complete")
    );

    // 3. S3 failure: the app never starts.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values[..5], "s3://no-such-bucket/app/").into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()), &hook.url);
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
    r.never_started("test-app-launch.service");
    let notice = hook.wait_for(5).await[4].body.clone();
    assert_eq!(notice["unit"], "bootstage-s3-sync.service");
    assert_eq!(notice["stage"], "s3-sync");
    assert_eq!(notice["exit_code"], 77);
    assert_eq!(
        common::states(&notice["timings"]),
        ["done", "failed", "pending"]
    );

    // 5. The kill switch: stages skipped, IMDS never asked, the app starts without parameters.
    let emu = Emulator::start(Config {
        user_data: Some(user_data(&values[..5], "s3://boot-config/app/").into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()), &hook.url);
    machine.write("etc/bootstage/disabled", "");
    let (r, _m) = tokio::task::spawn_blocking(move || (machine.boot(), machine))
        .await
        .unwrap();
    for stage in [
        "bootstage-metadata.service",
        "bootstage-s3-sync.service",
        "bootstage-hooks.service",
    ] {
        // Evaluated (a unit never considered also shows ConditionResult=no) and false.
        assert!(
            r.monotonic(stage, "ConditionTimestampMonotonic") > 0,
            "{stage}"
        );
        assert_eq!(
            r.unit(stage).get("ConditionResult").map(String::as_str),
            Some("no"),
            "{stage} was not skipped on its condition"
        );
    }
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
    assert_eq!(r.text("status.rc"), "0\n");
    let status: serde_json::Value = serde_json::from_str(&r.text("status.json")).unwrap();
    assert_eq!(status["state"], "disabled");
    assert_eq!(
        hook.received().len(),
        5,
        "no notice from a disabled machine"
    );

    // 7. Watch mode under systemd, woken by SQS: the shipped drop-in (its ExecStart with
    // the test app), the parameters naming the queue and a 10-minute interval, so the
    // change the host makes after the boot's sync can only come through S3's event
    // notification to the queue. It is swapped in and the app reloaded by `systemctl
    // reload` from inside the sandboxed unit; READY came after the first sync.
    let bucket = moto().bucket("boot-watch").await;
    bucket.put("app/app.conf", "v1\n").await;
    let queue = watched_queue(&bucket).await;
    let mut watching = params(&values[..5], "s3://boot-watch/app/");
    watching["bootstage"]["watch"] = serde_json::json!({"sqs": queue, "interval": "10m"});
    let emu = Emulator::start(Config {
        user_data: Some(encode(watching).into()),
        ..Config::default()
    })
    .await
    .unwrap();
    let machine = Machine::new(&bootstage_env(&emu.url()), &hook.url);
    let dropins = "etc/systemd/system/bootstage-s3-sync.service.d";
    let shipped = include_str!("../../systemd/examples/bootstage-s3-sync.service.d/watch.conf");
    machine.write(&format!("{dropins}/watch.conf"), shipped);
    machine.write(&format!("{dropins}/zz-test.conf"), WATCH_FAST);
    machine.write("etc/systemd/system/test-app-watched.service", APP_WATCHED);
    std::os::unix::fs::symlink(
        "/etc/systemd/system/test-app-watched.service",
        machine
            .root()
            .join("etc/systemd/system/multi-user.target.wants/test-app-watched.service"),
    )
    .unwrap();
    machine.write("etc/test-wait-for-reload", "");
    let runtime = tokio::runtime::Handle::current();
    let (r, _m) = tokio::task::spawn_blocking(move || {
        let r = machine.boot_with(|results| {
            // The per-boot hook runs after the first sync's READY: then change the object.
            let synced = results.join("hooks.log");
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            while !synced.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the boot never synced"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            runtime.block_on(bucket.put("app/app.conf", "v2\n"));
        });
        (r, machine)
    })
    .await
    .unwrap();
    let journal = r.text("journal");
    assert_eq!(r.text("reloaded"), "v2\n", "{journal}");
    let sync = r.unit("bootstage-s3-sync.service");
    assert_eq!(sync.get("ActiveState").map(String::as_str), Some("active"));
    assert_eq!(sync.get("SubState").map(String::as_str), Some("running"));
    assert_eq!(sync.get("WatchdogUSec").map(String::as_str), Some("3min"));
    assert_eq!(sync.get("NRestarts").map(String::as_str), Some("0"));
    assert!(journal.contains("--on-change hook done"), "{journal}");
    assert!(
        journal.contains("watch: woken by the queue messages=1 destinations=1"),
        "{journal}"
    );
}

/// A queue on moto that receives `bucket`'s S3 event notifications; its URL.
async fn watched_queue(bucket: &common::moto::Bucket) -> String {
    let (url, arn) = moto().queue(&bucket.name).await;
    bucket.notify(&arn).await;
    url
}
