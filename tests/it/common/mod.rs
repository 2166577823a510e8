//! Shared test harness: run the real `bootstage` binary in a sandbox, pointed at loopback.

pub mod adversarial;
pub mod faults;
pub mod kill;
pub mod moto;
pub mod stamped;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;

pub const BIN: &str = env!("CARGO_BIN_EXE_bootstage");

/// The binary the sandboxes run: `BIN` (this build's), or `BOOTSTAGE_TEST_BIN` when set
/// (scripts/test.sh runs the metadata, secrets and sync tests again against a build with
/// the release profile's behaviour: `panic = "abort"`, no overflow checks). A
/// `BOOTSTAGE_TEST_BIN` that is not there fails.
pub fn bin() -> &'static Path {
    static BIN_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN_PATH.get_or_init(|| match std::env::var_os("BOOTSTAGE_TEST_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "BOOTSTAGE_TEST_BIN={} does not exist",
                path.display()
            );
            path
        }
        None => PathBuf::from(BIN),
    })
}

/// Where sandboxes (and the demo's copy of the tree) are made: /tmp itself, not
/// `$TMPDIR`, which may point into a home no other user can traverse.
pub const TMP: &str = "/tmp";

/// Variables that could point bootstage anywhere but where a test says.
const SCRUBBED: &[&str] = &[
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_DISABLED",
    "GCE_METADATA_HOST",
    "BOOTSTAGE_AZURE_IMDS",
    "BOOTSTAGE_AZURE_WIRESERVER",
    "BOOTSTAGE_AZURE_REPORT_READY",
    "BOOTSTAGE_OPENSTACK_METADATA",
    "BOOTSTAGE_CONFIG_DRIVE",
    "BOOTSTAGE_PROVIDER",
    "BOOTSTAGE_DMI_DIR",
    "BOOTSTAGE_STATE_DIR",
    "BOOTSTAGE_USER_DATA_FILE",
    "BOOTSTAGE_IMDS_V2_ONLY",
    "BOOTSTAGE_LOG",
    "BOOTSTAGE_TIMEOUT",
    "BOOTSTAGE_USER_DATA_WAIT",
    "BOOTSTAGE_HOOKS_DIR",
    "BOOTSTAGE_LIB_DIR",
    "BOOTSTAGE_HOOK_TIMEOUT",
    "BOOTSTAGE_NOTIFY_CONFIG",
    "BOOTSTAGE_LIFECYCLE_CONFIG",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_AUTO_SCALING",
    "AWS_ENDPOINT_URL_CLOUDFORMATION",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Sandbox {
    /// A fresh `mktemp -d` in /tmp (root's, 0700), not under the clone: a clone may sit
    /// under /root (0700), where a test's unprivileged user cannot reach its sandbox.
    /// Hooks in it sit below sticky /tmp, which the hook check accepts since the directory
    /// below /tmp is root's.
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("bootstage-test.")
                .tempdir_in(TMP)
                .unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.state().join(name)).ok()
    }

    /// Puts `name` in the state dir as if an earlier run had written it.
    pub fn seed(&self, name: &str, contents: &str) {
        std::fs::create_dir_all(self.state()).unwrap();
        std::fs::write(self.state().join(name), contents).unwrap();
    }

    /// Seeds the state dir as the metadata stage would have left it, with `bootstage.sync`
    /// = `entries` in the parameters.
    pub fn seed_sync(&self, entries: serde_json::Value) {
        let params = serde_json::json!({ "bootstage": { "sync": entries } });
        self.seed("params.json", &params.to_string());
        self.seed(
            "instance.json",
            "{\"source\":\"flags\",\"instance_id\":\"i-1\"}",
        );
        self.seed("params.env", "");
        self.seed("hooks.env", "");
    }

    /// The bootstage command with a scrubbed environment and this sandbox's state dir.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.command_of(bin(), args)
    }

    /// `command`, of another build of the binary (a cross-built one).
    pub fn command_of(&self, bin: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        for var in SCRUBBED {
            cmd.env_remove(var);
        }
        // Anything that reaches for IMDS without being pointed at an emulator lands on a
        // closed loopback port, never on the real address.
        cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
            // Likewise for GCP's metadata server; and the provider is never chosen by this
            // machine's DMI (on a GCE runner it would say Google): the sandbox's `dmi`
            // folder, absent unless a test writes it, is read instead.
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            // And Azure's IMDS and wireserver (169.254.169.254 and 168.63.129.16 by
            // default) and OpenStack's metadata service (169.254.169.254).
            .env("BOOTSTAGE_AZURE_IMDS", "http://127.0.0.1:9")
            .env("BOOTSTAGE_AZURE_WIRESERVER", "http://127.0.0.1:9")
            .env("BOOTSTAGE_OPENSTACK_METADATA", "http://127.0.0.1:9")
            .env("BOOTSTAGE_DMI_DIR", self.path("dmi"))
            .env("BOOTSTAGE_LOG", "debug")
            // Hooks, their markers and the notice fallback live in the sandbox, never in
            // this machine's /etc/bootstage or /var/lib/bootstage.
            .env("BOOTSTAGE_HOOKS_DIR", self.path("hooks"))
            .env("BOOTSTAGE_LIB_DIR", self.path("lib"))
            .env("BOOTSTAGE_NOTIFY_CONFIG", self.path("notify.json"))
            .env(
                "BOOTSTAGE_LIFECYCLE_CONFIG",
                self.path("lifecycle-image.json"),
            )
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `command(args)` run under `prefix` (`setpriv …`, `/usr/bin/time …`, `sh -c …`), with
    /// the same environment.
    pub fn command_under(&self, prefix: &[&str], args: &[&str]) -> tokio::process::Command {
        self.command_under_of(prefix, bin(), args)
    }

    /// `command_under`, of another build of the binary (a cross-built one, under qemu).
    pub fn command_under_of(
        &self,
        prefix: &[&str],
        bin: &Path,
        args: &[&str],
    ) -> tokio::process::Command {
        let inner = self.command_of(bin, args);
        let std = inner.as_std();
        let mut cmd = tokio::process::Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(std.get_program())
            .args(std.get_args());
        for (k, v) in std.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Outcome {
        run(self.command(args)).await
    }

    /// `bootstage metadata` against an IMDS endpoint, with short test bounds.
    pub async fn metadata(&self, endpoint: &str, extra: &[&str]) -> Outcome {
        let mut args = vec!["metadata", "--imds-endpoint", endpoint];
        args.extend_from_slice(extra);
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout", "10s"]);
        }
        if !extra.contains(&"--user-data-wait") {
            args.extend(["--user-data-wait", "5s"]);
        }
        self.run(&args).await
    }
}

pub async fn run(mut cmd: tokio::process::Command) -> Outcome {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("bootstage finished within 60 s")
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// The run ended with `code` and said `message` on stderr.
#[track_caller]
pub fn assert_exit(out: &Outcome, code: i32, message: &str) {
    assert_eq!(out.code, code, "{}", out.stderr);
    assert!(
        out.stderr.contains(message),
        "expected {message:?} in:\n{}",
        out.stderr
    );
}

pub fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Reads an env file back through a real shell: `set -a; . FILE; env -0`, minus the
/// variables the shell had anyway.
pub fn shell_readback(shell: &str, file: &Path) -> BTreeMap<String, String> {
    let script = r#"set -a; . "$1"; set +a; env -0"#;
    let baseline = std::process::Command::new(shell)
        .arg("-c")
        .arg("env -0")
        .env_clear()
        .output()
        .unwrap();
    let out = std::process::Command::new(shell)
        .arg("-c")
        .arg(script)
        .arg(shell)
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = |bytes: &[u8]| -> BTreeMap<String, String> {
        bytes
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = String::from_utf8(e.to_vec()).unwrap();
                let (k, v) = e.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let before = names(&baseline.stdout);
    let mut after = names(&out.stdout);
    after.retain(|k, _| !before.contains_key(k) && k != "_");
    after
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The `state` of each entry of a list of stage records (`status --json`'s `stages`, a
/// notice's `timings`), in order.
pub fn states(records: &serde_json::Value) -> Vec<String> {
    records
        .as_array()
        .expect("a list of stage records")
        .iter()
        .map(|r| r["state"].as_str().expect("a state").to_string())
        .collect()
}

/// A running child's stderr, collected line by line as it comes (the watch-mode tests
/// read it while the process runs); the child must have been spawned with a piped stderr.
pub fn capture_stderr(
    child: &mut tokio::process::Child,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    use tokio::io::AsyncBufReadExt;
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = text.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Reads sd_notify datagrams from `socket` until one has the line `want`.
pub fn next_notification(socket: &std::os::unix::net::UnixDatagram, want: &str) {
    loop {
        let text = recv_notification(socket).expect("a notification");
        if text.lines().any(|l| l == want) {
            return;
        }
    }
}

/// A real sd_notify socket bound at `path`, read on a thread (as [`recv_notification`]
/// reads, descriptors closed) until a datagram contains `last` or none comes for
/// `quiet`: the datagrams' texts, in order.
pub fn notifications_until(
    path: &Path,
    last: &'static str,
    quiet: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
    socket.set_read_timeout(Some(quiet)).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(text) = recv_notification(&socket) {
            let done = text.contains(last);
            seen.push(text);
            if done {
                break;
            }
        }
        seen
    })
}

/// Reads one sd_notify datagram as systemd does: with room for the descriptors that come
/// with it, which it then closes. `BARRIER=1` comes with a pipe's write end, and closing
/// it is the acknowledgement the sender waits for (at most 5 s, while a datagram sits
/// unread). Returns the datagram's text.
pub fn recv_notification(socket: &std::os::unix::net::UnixDatagram) -> std::io::Result<String> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    // u64s, for the alignment of a cmsghdr: room for 64 descriptors.
    let mut control = [0u64; 36];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer in it outlives the call, and the
    // control messages are read only within the length the kernel reports.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let fds = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    libc::close(fds.add(i).read_unaligned());
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    }
}

/// Each lifecycle action of an instance in the lifecycle emulator, oldest first, as
/// `kind result by refused=N` (`-` while it waits).
pub fn actions(orch: &lifecycle_emulator::Emulator, instance: &str) -> Vec<String> {
    orch.actions()[instance]
        .actions
        .iter()
        .map(|a| {
            format!(
                "{} {} {} refused={}",
                a.kind,
                a.result.as_deref().unwrap_or("-"),
                a.by.as_deref().unwrap_or("-"),
                a.refused
            )
        })
        .collect()
}
