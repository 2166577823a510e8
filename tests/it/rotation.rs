//! Secrets that rotate (#28): a watching `s3-sync` resolves the parameters' references and
//! imports again, on `bootstage.watch.secrets_interval` and on Parameter Store and
//! Secrets Manager events that EventBridge delivers to its queue, against moto on
//! 127.0.0.1 (SSM, Secrets Manager, SQS). The events are the real-shaped samples in
//! `tests/fixtures/eventbridge/`, sent to the queue as EventBridge would (moto does not
//! route service events); SSM and Secrets Manager calls go through the fault proxy, which
//! counts them. The watcher polls S3 only every 10 minutes: what a test sees came through
//! the queue or the values' own interval.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::ParameterType;
use common::Sandbox;
use common::faults::{self, Faults};
use common::moto::moto;
use serde_json::{Value, json};

const PARAMETER_EVENT: &str = include_str!("../fixtures/eventbridge/parameter-store-change.json");
const ROTATION_EVENT: &str =
    include_str!("../fixtures/eventbridge/secretsmanager-rotation-succeeded.json");
const PUT_EVENT: &str =
    include_str!("../fixtures/eventbridge/secretsmanager-put-secret-value.json");

/// Every value a test stores starts with this: no line bootstage writes may hold it.
const MARK: &str = "s3cr3t-";

/// A value for `what`, built from the adversarial fixtures (quotes, `$(…)`, newlines…).
fn value(what: &str, seed: u64) -> String {
    let adversarial = common::adversarial::values(40, seed);
    format!("{MARK}{what}-{}", adversarial[20 + (seed as usize % 20)])
}

async fn put_parameter(name: &str, value: &str) {
    moto()
        .ssm()
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

async fn delete_parameter(name: &str) {
    moto()
        .ssm()
        .await
        .delete_parameter()
        .name(name)
        .send()
        .await
        .unwrap();
}

async fn create_secret(name: &str, value: &str) {
    moto()
        .secretsmanager()
        .await
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

async fn put_secret_value(name: &str, value: &str) {
    moto()
        .secretsmanager()
        .await
        .put_secret_value()
        .secret_id(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl Queue {
    async fn new(name: &str) -> Queue {
        let (url, _) = moto().queue(name).await;
        Queue {
            client: moto().sqs().await,
            url,
        }
    }

    async fn send(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Waits until every message has been deleted.
    async fn drained(&self) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let attrs = self
                .client
                .get_queue_attributes()
                .queue_url(&self.url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .unwrap();
            let attrs = attrs.attributes().unwrap();
            let held = [
                &attrs[&A::ApproximateNumberOfMessages],
                &attrs[&A::ApproximateNumberOfMessagesNotVisible],
            ];
            if held == ["0", "0"] {
                return;
            }
            assert!(Instant::now() < until, "messages left: {held:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A watching `s3-sync` of the configured (empty) sync, its notification socket and its
/// stderr, with a hook that records each run and what the app would read then.
struct Watcher {
    child: tokio::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    socket: UnixDatagram,
    hook_log: PathBuf,
    state: PathBuf,
}

impl Watcher {
    /// Starts the watcher on `params` as user-data, with AWS through `proxy`; waits for
    /// READY=1.
    async fn start(sb: &Sandbox, params: &Value, proxy: &str) -> Watcher {
        let user_data = sb.path("user-data.json");
        std::fs::write(&user_data, params.to_string()).unwrap();
        let socket_path = sb.path("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let hook_log = sb.path("hook.log");
        let state = sb.state();
        // What an app restarted by the hook reads: the credential file and params.env.
        let hook = format!(
            "echo \"changed $BOOTSTAGE_CHANGED\" >> {log}; cat {state}/credentials/api.token > {seen}/token 2>/dev/null; (set -a; . {state}/params.env; printf %s \"$DB_PASSWORD\") > {seen}/password",
            log = hook_log.display(),
            state = state.display(),
            seen = sb.path("").display(),
        );
        let mut cmd = sb.command(&[
            "s3-sync",
            "--watch",
            "10m",
            "--user-data-file",
            user_data.to_str().unwrap(),
            "--fact",
            "instance-id=i-0rotation",
            "--on-change",
            &hook,
            "--sync-timeout",
            "20s",
        ]);
        cmd.envs(moto().env())
            .env("AWS_ENDPOINT_URL", proxy)
            .env("NOTIFY_SOCKET", &socket_path);
        let mut child = cmd.spawn().unwrap();
        let stderr = common::capture_stderr(&mut child);
        let w = Watcher {
            child,
            stderr,
            socket,
            hook_log,
            state,
        };
        w.next("READY=1");
        w
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads notifications until one has the line `want`.
    fn next(&self, want: &str) {
        common::next_notification(&self.socket, want);
    }

    /// Waits until the log has `count` lines holding `text`.
    async fn logged(&self, text: &str, count: usize) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.stderr().matches(text).count() < count {
            assert!(
                Instant::now() < until,
                "{text:?} not logged {count} times:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn hook_runs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.hook_log)
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The file `name` in the state dir, read through its fixed link.
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join(name)).unwrap()
    }

    /// (inode, mtime) of each state dir file, read through the fixed links.
    fn stamps(&self) -> Vec<(&'static str, u64, i64, i64)> {
        FILES
            .iter()
            .map(|name| {
                let m = std::fs::metadata(self.state.join(name)).unwrap();
                (*name, m.ino(), m.mtime(), m.mtime_nsec())
            })
            .collect()
    }

    async fn stop(mut self) -> (i32, String) {
        let socket = self.socket.try_clone().unwrap();
        std::thread::spawn(move || while common::recv_notification(&socket).is_ok() {});
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the watcher exits on SIGTERM")
            .unwrap();
        // The reader task has the rest of stderr once the pipe closes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.code().unwrap_or(-1), self.stderr())
    }
}

/// What the tests compare before and after: every file the metadata stage wrote.
const FILES: [&str; 7] = [
    "params.json",
    "params.env",
    "hooks.env",
    "instance.json",
    "credentials/db-password",
    "credentials/api.token",
    "credentials/static.key",
];

/// Which of [`FILES`] were replaced between two stamps.
fn replaced(
    before: &[(&'static str, u64, i64, i64)],
    after: &[(&'static str, u64, i64, i64)],
) -> Vec<&'static str> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.0)
        .collect()
}

/// SSM and Secrets Manager calls that passed the proxy (not SQS's).
fn secret_calls(proxy: &faults::Proxy) -> usize {
    proxy
        .faults
        .targets
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.starts_with("AmazonSSM.") || t.starts_with("secretsmanager."))
        .count()
}

/// The parameters of the event tests: an import of SecureStrings under `path` (into
/// params.json, params.env and a credential, never hooks.env), a Secrets Manager secret
/// only as a credential file (`"env": false`) and one that never rotates.
fn params(path: &str, token: &str, fixed: &str, queue: &str) -> Value {
    json!({
        "port": 8080,
        "api": {"token": {"secretsmanager": token, "env": false}},
        "static": {"key": {"secretsmanager": fixed, "env": false}},
        "bootstage": {
            "import": [{"ssm_path": path, "recursive": true}],
            "watch": {"sqs": queue, "interval": "10m"},
        },
    })
}

fn assert_no_value(stderr: &str, values: &[&str]) {
    assert!(!stderr.contains(MARK), "a value in the log:\n{stderr}");
    for v in values {
        assert!(!stderr.contains(v), "{v:?} in the log");
    }
}

/// A Secrets Manager rotation and a Parameter Store change, each announced by its
/// EventBridge event on the queue: each reaches the credential file (and params.env for
/// the parameter) in one swap, the hook runs once for each and reads the new value, and
/// nothing else is written: every file whose value did not change keeps its inode and
/// mtime. An event for a value that did not change writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_reaches_credentials_and_params_env_and_the_hook_once() {
    // The names the fixtures carry: `/rotation/db-password`, `rotation/api-token`.
    let (pw1, pw2) = (value("pw-initial", 1), value("pw-rotated", 2));
    let (tok1, tok2) = (value("tok-initial", 3), value("tok-rotated", 4));
    let fixed = value("static", 5);
    put_parameter("/rotation/db-password", &pw1).await;
    create_secret("rotation/api-token", &tok1).await;
    create_secret("rotation/static", &fixed).await;
    let queue = Queue::new("rotation-events").await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let params = params(
        "/rotation/",
        "rotation/api-token",
        "rotation/static",
        &queue.url,
    );
    let w = Watcher::start(&sb, &params, &proxy.url).await;
    w.logged("references and imports are known", 1).await;
    // The paths units and apps name are links into the current set.
    for name in ["params.json", "params.env", "hooks.env", "credentials"] {
        assert_eq!(
            std::fs::read_link(w.state.join(name)).unwrap(),
            Path::new(".values/current").join(name)
        );
    }
    assert_eq!(w.read("credentials/api.token"), tok1);
    assert_eq!(w.read("credentials/db-password"), pw1);
    let start = w.stamps();

    // Secrets Manager rotates the token: RotationSucceeded.
    put_secret_value("rotation/api-token", &tok2).await;
    queue.send(ROTATION_EVENT).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(w.read("credentials/api.token"), tok2);
    let rotated = w.stamps();
    assert_eq!(replaced(&start, &rotated), ["credentials/api.token"]);
    assert_eq!(
        w.hook_runs(),
        [format!("changed {}", w.state.display())],
        "the hook, once"
    );
    assert_eq!(std::fs::read_to_string(sb.path("token")).unwrap(), tok2);
    queue.drained().await;

    // The parameter changes: Parameter Store Change. The import brings it into
    // params.json, params.env and its credential; hooks.env never has it.
    put_parameter("/rotation/db-password", &pw2).await;
    queue.send(PARAMETER_EVENT).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(w.read("credentials/db-password"), pw2);
    let env = common::shell_readback("dash", &w.state.join("params.env"));
    assert_eq!(env["DB_PASSWORD"], pw2);
    assert_eq!(env["PORT"], "8080");
    let changed = w.stamps();
    assert_eq!(
        replaced(&rotated, &changed),
        ["params.json", "params.env", "credentials/db-password"]
    );
    assert_eq!(w.hook_runs().len(), 2, "the hook, once more");
    assert_eq!(std::fs::read_to_string(sb.path("password")).unwrap(), pw2);
    queue.drained().await;

    // A PutSecretValue event for the value the token already has: resolved again (the
    // calls show it), nothing written, no hook.
    let calls = secret_calls(&proxy);
    queue.send(PUT_EVENT).await;
    queue.drained().await;
    assert!(secret_calls(&proxy) > calls, "resolved again");
    assert_eq!(w.stamps(), changed, "nothing written");
    assert_eq!(w.hook_runs().len(), 2);

    let (code, stderr) = w.stop().await;
    assert_eq!(code, 0, "{stderr}");
    assert_no_value(&stderr, &[&pw1, &pw2, &tok1, &tok2, &fixed]);
}

/// `bootstage.watch.secrets_interval` with no queue: a changed parameter is picked up at
/// the next interval, once; intervals with nothing changed write nothing; a parameter
/// that is gone keeps the old value, the log names it, and the next interval tries again.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_interval_picks_up_a_change_without_events() {
    let (v1, v2, v3) = (value("iv-1", 6), value("iv-2", 7), value("iv-3", 8));
    put_parameter("/rot-interval/db-password", &v1).await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let params = json!({
        "db": {"password": {"ssm": "/rot-interval/db-password"}},
        "bootstage": {"watch": {"interval": "10m", "secrets_interval": 1}},
    });
    let w = Watcher::start(&sb, &params, &proxy.url).await;
    assert_eq!(w.read("credentials/db.password"), v1);

    put_parameter("/rot-interval/db-password", &v2).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(w.read("credentials/db.password"), v2);
    let env = common::shell_readback("dash", &w.state.join("params.env"));
    assert_eq!(env["DB_PASSWORD"], v2);
    assert_eq!(w.hook_runs().len(), 1);
    let stamp = |w: &Watcher| {
        [
            "params.json",
            "params.env",
            "hooks.env",
            "credentials/db.password",
        ]
        .map(|n| std::fs::metadata(w.state.join(n)).unwrap())
        .map(|m| (m.ino(), m.mtime_nsec()))
    };
    let after = stamp(&w);
    // Two intervals with nothing changed: nothing written, no hook.
    let quiet = "resolved again: no value changed";
    let seen = w.stderr().matches(quiet).count();
    w.logged(quiet, seen + 2).await;
    assert_eq!(stamp(&w), after);
    assert_eq!(w.hook_runs().len(), 1);

    // Gone: the values stay, the log names the parameter, the next interval tries again.
    delete_parameter("/rot-interval/db-password").await;
    let missing = "the parameters keep their values, resolving them again failed: SSM parameter \"/rot-interval/db-password\" does not exist";
    w.logged(missing, 2).await;
    assert_eq!(stamp(&w), after);
    put_parameter("/rot-interval/db-password", &v3).await;
    w.next("READY=1");
    assert_eq!(w.read("credentials/db.password"), v3);
    assert_eq!(w.hook_runs().len(), 2);

    let (code, stderr) = w.stop().await;
    assert_eq!(code, 0, "{stderr}");
    assert_no_value(&stderr, &[&v1, &v2, &v3]);
}

/// Events that name no reference or import of this instance: a Parameter Store change and
/// a Secrets Manager rotation of others' names, and another service's event. Each is
/// deleted at once; nothing is resolved (no SSM or Secrets Manager call), nothing written,
/// no hook.
#[tokio::test(flavor = "multi_thread")]
async fn an_unrelated_event_is_deleted_and_writes_nothing() {
    put_parameter("/rot-other/db-password", &value("other-pw", 9)).await;
    create_secret("rot-other/api-token", &value("other-tok", 10)).await;
    create_secret("rot-other/static", &value("other-static", 11)).await;
    let queue = Queue::new("rotation-unrelated").await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let params = params(
        "/rot-other/",
        "rot-other/api-token",
        "rot-other/static",
        &queue.url,
    );
    let w = Watcher::start(&sb, &params, &proxy.url).await;
    w.logged("references and imports are known", 1).await;
    let before = w.stamps();
    let calls = secret_calls(&proxy);
    // The fixtures name `/rotation/db-password` and `rotation/api-token`: not ours. A
    // parameter whose name only starts like ours is not ours either.
    let near = PARAMETER_EVENT.replace("/rotation/db-password", "/rot-otherwise/db-password");
    let ec2 = json!({"version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "123456789012", "time": "2026-12-06T21:43:00Z", "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0rotation"],
        "detail": {"instance-id": "i-0rotation", "state": "running"}});
    for body in [PARAMETER_EVENT, ROTATION_EVENT, &near, &ec2.to_string()] {
        queue.send(body).await;
    }
    queue.drained().await;
    assert_eq!(secret_calls(&proxy), calls, "nothing resolved");
    assert_eq!(w.stamps(), before, "nothing written");
    assert!(w.hook_runs().is_empty());
    let (code, stderr) = w.stop().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("deleting messages that name nothing synced here"),
        "{stderr}"
    );
    assert_no_value(&stderr, &[]);
}

/// A Parameter Store event naming a release pointer (`"from": {"ssm": …}`) wakes a pass
/// over that destination: the new release is swapped in and the hook runs once, with no
/// reference resolved again (the pointer is no reference).
#[tokio::test(flavor = "multi_thread")]
async fn a_release_pointer_event_wakes_its_destination() {
    let bucket = moto().bucket("rot-release").await;
    bucket.put("r1/app.conf", "release 1").await;
    bucket.put("r2/app.conf", "release 2").await;
    let ssm = moto().ssm().await;
    let pointer = |value: &'static str| {
        ssm.put_parameter()
            .name("/rot-release/pointer")
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
    };
    pointer("s3://rot-release/r1/").await.unwrap();
    let queue = Queue::new("rotation-release").await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let dest = sb.path("dest/app");
    let params = json!({"bootstage": {
        "sync": [{"from": {"ssm": "/rot-release/pointer"}, "to": dest}],
        "watch": {"sqs": queue.url, "interval": "10m"},
    }});
    let w = Watcher::start(&sb, &params, &proxy.url).await;
    assert_eq!(
        std::fs::read_to_string(dest.join("app.conf")).unwrap(),
        "release 1"
    );
    pointer("s3://rot-release/r2/").await.unwrap();
    let event = PARAMETER_EVENT
        .replace("/rotation/db-password", "/rot-release/pointer")
        .replace("SecureString", "String");
    queue.send(&event).await;
    w.next("RELOADING=1");
    w.next("READY=1");
    assert_eq!(
        std::fs::read_to_string(dest.join("app.conf")).unwrap(),
        "release 2"
    );
    assert_eq!(
        w.hook_runs(),
        [format!("changed {}", dest.display())],
        "the hook, once, for the destination alone"
    );
    queue.drained().await;
    let (code, stderr) = w.stop().await;
    assert_eq!(code, 0, "{stderr}");
}
