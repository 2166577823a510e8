//! Watch mode woken by SQS, against moto on 127.0.0.1: moto serves the queue and sends
//! S3's own event notifications to it. Every watcher polls only every 10 minutes unless a
//! test says otherwise, so what a test sees within its run came through the queue.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::Sandbox;
use common::moto::{Bucket, moto};

struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    arn: String,
}

impl Queue {
    async fn new(name: &str) -> Queue {
        let (url, arn) = moto().queue(name).await;
        let client = moto().sqs().await;
        Queue { client, url, arn }
    }

    /// Messages in the queue: visible, and received but not yet deleted.
    async fn held(&self) -> (u64, u64) {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = attrs.attributes().unwrap();
        let n = |a: &QueueAttributeName| attrs[a].parse::<u64>().unwrap();
        (
            n(&QueueAttributeName::ApproximateNumberOfMessages),
            n(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Waits until every message has been deleted.
    async fn drained(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.held().await != (0, 0) {
            assert!(
                Instant::now() < until,
                "messages left: {:?}",
                self.held().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
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
}

/// S3 sends an event to `queue` for every object created or removed in `bucket`.
async fn notify(bucket: &Bucket, queue: &Queue) {
    bucket.notify(&queue.arn).await;
}

/// A watching s3-sync and its notification socket.
struct Watcher {
    child: tokio::process::Child,
    /// Its stderr so far (read as it comes, so the pipe never fills).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    socket: UnixDatagram,
    dest: PathBuf,
    hook_log: PathBuf,
}

impl Watcher {
    /// Starts `s3-sync --watch INTERVAL --sqs QUEUE` of `from` and waits for READY=1.
    async fn start(
        sb: &Sandbox,
        from: &str,
        queue: &str,
        interval: &str,
        env: &[(&str, &str)],
    ) -> Watcher {
        let dest = sb.path("dest/config");
        let args = [
            "s3-sync",
            "--from",
            from,
            "--to",
            dest.to_str().unwrap(),
            "--watch",
            interval,
            "--sqs",
            queue,
        ];
        Watcher::start_with(sb, &args, env).await
    }

    /// Starts `s3-sync ARGS` with the hook and a short sync timeout; waits for READY=1.
    async fn start_with(sb: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Watcher {
        let socket_path = sb.path("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let dest = sb.path("dest/config");
        let hook_log = sb.path("hook.log");
        let hook = format!(
            "echo \"changed $BOOTSTAGE_CHANGED\" >> {}",
            hook_log.display()
        );
        let mut args = args.to_vec();
        args.extend(["--on-change", &hook, "--sync-timeout", "20s"]);
        let mut cmd = sb.command(&args);
        cmd.envs(moto().env()).env("NOTIFY_SOCKET", &socket_path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = common::capture_stderr(&mut child);
        let w = Watcher {
            child,
            stderr,
            socket,
            dest,
            hook_log,
        };
        w.next("READY=1");
        w
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads notifications until one has the line `want` (or starts with it, for a
    /// `STATUS=` prefix); returns that line.
    fn next(&self, want: &str) -> String {
        loop {
            let text = common::recv_notification(&self.socket).expect("a notification in time");
            if let Some(line) = text.lines().find(|l| l.starts_with(want)) {
                return line.to_string();
            }
        }
    }

    fn hook_runs(&self) -> usize {
        std::fs::read_to_string(&self.hook_log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    async fn stop(self) -> std::process::ExitStatus {
        self.stop_reading().await.0
    }

    /// SIGTERM, then the exit status, the time from the signal to the exit, and the
    /// notifications read meanwhile.
    async fn stop_reading(mut self) -> (std::process::ExitStatus, Duration, Vec<String>) {
        // Read what the watcher still sends, as systemd does: its last datagram is the
        // BARRIER=1 it waits on before exiting, acknowledged by closing the descriptor that
        // came with it. Left unread, the barrier would hold the exit for its 5 s bound.
        let socket = self.socket.try_clone().unwrap();
        let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = read.clone();
        std::thread::spawn(move || {
            while let Ok(text) = common::recv_notification(&socket) {
                sink.lock().unwrap().push(text);
            }
        });
        let asked = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the watcher exits on SIGTERM")
            .unwrap();
        let took = asked.elapsed();
        let read = read.lock().unwrap().clone();
        (status, took, read)
    }
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), text)
        })
        .collect()
}

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_is_swapped_in_and_the_hook_run_through_the_queue() {
    let bucket = moto().bucket("sqs-put").await;
    let queue = Queue::new("sqs-put").await;
    bucket.put("w/app.conf", "v1").await;
    notify(&bucket, &queue).await;
    let sb = Sandbox::new();
    let w = Watcher::start(&sb, "s3://sqs-put/w/", &queue.url, "10m", &[]).await;
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v1")]));
    let mark = moto().mark();
    let put = Instant::now();
    bucket.put("w/app.conf", "v2").await;
    w.next("RELOADING=1");
    w.next("READY=1");
    eprintln!("PUT to swapped in and hook run: {:?}", put.elapsed());
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v2")]));
    assert_eq!(
        std::fs::read_to_string(&w.hook_log).unwrap(),
        format!("changed {}\n", w.dest.display())
    );
    queue.drained().await;
    let counts = moto().counts("sqs-put", mark);
    assert_eq!((counts.list, counts.get), (1, 1), "one pass: {counts:?}");
    let shown = sb.run(&["status"]).await.stdout;
    assert!(
        shown.contains(&format!(
            "watch: woken by {}; polling every 10m as the safety net\n",
            queue.url
        )),
        "{shown}"
    );
    assert_eq!(w.stop().await.code(), Some(0));
    let shown = sb.run(&["status"]).await.stdout;
    assert!(
        !shown.contains("watch:"),
        "a stopped watcher is not shown: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_wrapped_events_and_deployment_messages_wake_it_too() {
    let bucket = moto().bucket("sqs-sns").await;
    let queue = Queue::new("sqs-sns").await;
    bucket.put("w/app.conf", "v1").await;
    let sb = Sandbox::new();
    let w = Watcher::start(&sb, "s3://sqs-sns/w/", &queue.url, "10m", &[]).await;
    // The object changes with no notification configured; SNS then delivers the event as
    // a topic subscription does without raw delivery: the event is the Message string.
    bucket.put("w/app.conf", "v2").await;
    let event = serde_json::json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "sqs-sns"}, "object": {"key": "w/app.conf", "size": 2}}}]});
    let envelope = serde_json::json!({
        "Type": "Notification",
        "MessageId": "6a0b2b2e-8d3f-5c3e-9f1a-1b2c3d4e5f60",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:deploys",
        "Subject": "Amazon S3 Notification",
        "Message": event.to_string(),
        "Timestamp": "2026-12-02T12:00:00.000Z",
        "SignatureVersion": "1",
    });
    queue.send(&envelope.to_string()).await;
    w.next("READY=1");
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v2")]));
    queue.drained().await;
    // A deployment message names the destination.
    bucket.put("w/app.conf", "v3").await;
    queue
        .send(&serde_json::json!({"sync": [w.dest.to_str().unwrap()]}).to_string())
        .await;
    w.next("READY=1");
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v3")]));
    queue.drained().await;
    assert_eq!(w.hook_runs(), 2);
    assert_eq!(w.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_twenty_messages_makes_at_most_two_passes() {
    let bucket = moto().bucket("sqs-burst").await;
    let queue = Queue::new("sqs-burst").await;
    notify(&bucket, &queue).await;
    // Twenty events wait in the queue when the watcher starts.
    for i in 0..20 {
        bucket.put(&format!("w/f{i:02}"), format!("{i}")).await;
    }
    let sb = Sandbox::new();
    let mark = moto().mark();
    let w = Watcher::start(&sb, "s3://sqs-burst/w/", &queue.url, "10m", &[]).await;
    queue.drained().await;
    let counts = moto().counts("sqs-burst", mark);
    // The first sync's LIST, then at most two passes for the twenty messages.
    assert!((2..=3).contains(&counts.list), "{counts:?}");
    assert_eq!(counts.get, 20, "{counts:?}");
    assert_eq!(tree(&w.dest).len(), 20);
    assert_eq!(w.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_for_another_bucket_is_deleted_without_a_pass() {
    let ours = moto().bucket("sqs-ours").await;
    let theirs = moto().bucket("sqs-theirs").await;
    let queue = Queue::new("sqs-shared").await;
    notify(&theirs, &queue).await;
    ours.put("w/app.conf", "v1").await;
    let sb = Sandbox::new();
    let w = Watcher::start(&sb, "s3://sqs-ours/w/", &queue.url, "10m", &[]).await;
    let mark = moto().mark();
    theirs.put("w/app.conf", "elsewhere").await;
    queue.send("not json at all").await;
    queue.drained().await;
    assert_eq!(moto().counts("sqs-ours", mark).list, 0);
    assert_eq!(w.hook_runs(), 0);
    assert_eq!(w.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_pass_leaves_the_message_to_come_back() {
    use common::faults::{Faults, start};
    use std::sync::atomic::Ordering;
    let bucket = moto().bucket("sqs-fail").await;
    let queue = Queue::new("sqs-fail").await;
    bucket.put("w/app.conf", "v1").await;
    notify(&bucket, &queue).await;
    // S3 through the fault proxy, SQS straight to moto.
    let proxy = start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let w = Watcher::start(
        &sb,
        "s3://sqs-fail/w/",
        &queue.url,
        "10m",
        &[("AWS_ENDPOINT_URL_S3", &proxy.url)],
    )
    .await;
    proxy.faults.deny_list.store(true, Ordering::SeqCst);
    bucket.put("w/app.conf", "v2").await;
    let failed = w.next("STATUS=last pass failed");
    assert!(failed.contains("access refused"), "{failed}");
    assert_eq!(queue.held().await, (0, 1), "kept, hidden for a while");
    proxy.faults.deny_list.store(false, Ordering::SeqCst);
    w.next("READY=1");
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v2")]));
    queue.drained().await;
    assert_eq!(w.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_still_catches_a_change_when_the_queue_is_gone() {
    let bucket = moto().bucket("sqs-gone").await;
    let queue = Queue::new("sqs-gone").await;
    bucket.put("w/app.conf", "v1").await;
    let sb = Sandbox::new();
    let w = Watcher::start(&sb, "s3://sqs-gone/w/", &queue.url, "1s", &[]).await;
    queue
        .client
        .delete_queue()
        .queue_url(&queue.url)
        .send()
        .await
        .unwrap();
    let status = w.next("STATUS=queue unreadable, polling every 1s");
    assert!(status.contains(&queue.url), "{status}");
    let shown = sb.run(&["status"]).await.stdout;
    let line = shown
        .lines()
        .find(|l| l.starts_with("watch: "))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("watch: {} unreadable since ", queue.url))
            && line.ends_with("; polling every 1s meanwhile"),
        "{shown}"
    );
    bucket.put("w/app.conf", "v2").await;
    w.next("READY=1");
    assert_eq!(tree(&w.dest), files(&[("app.conf", "v2")]));
    assert_eq!(w.stop().await.code(), Some(0));
}

/// SQS through the fault proxy, so the test sees the long poll (20 s) in flight: passed on
/// to moto, no answer yet. SIGTERM then ends the watcher within 2 s, with the poll still
/// unanswered: the claim is "at once", and 2 s is well under both the 20 s a watcher that
/// waited the poll out would take and the barrier's 5 s bound, yet about 20 times what the
/// exit takes on an idle machine (~0.1 s), room for a loaded 2-core one.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_a_long_poll_at_once() {
    use common::faults::{Faults, start};
    const RECEIVE: &str = "AmazonSQS.ReceiveMessage";
    let bucket = moto().bucket("sqs-term").await;
    let queue = Queue::new("sqs-term").await;
    bucket.put("w/app.conf", "v1").await;
    let proxy = start(&moto().url, Faults::default()).await;
    let sb = Sandbox::new();
    let w = Watcher::start(
        &sb,
        "s3://sqs-term/w/",
        &queue.url,
        "10m",
        &[("AWS_ENDPOINT_URL_SQS", &proxy.url)],
    )
    .await;
    let count = |list: &std::sync::Mutex<Vec<String>>| {
        list.lock()
            .unwrap()
            .iter()
            .filter(|t| *t == RECEIVE)
            .count()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while count(&proxy.faults.targets) <= count(&proxy.faults.answered) {
        assert!(Instant::now() < until, "no ReceiveMessage in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answered = count(&proxy.faults.answered);
    let (status, took, read) = w.stop_reading().await;
    eprintln!("exited {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(2),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(
        count(&proxy.faults.answered),
        answered,
        "the long poll ended before the watcher did"
    );
    assert!(
        read.iter().any(|t| t.lines().any(|l| l == "BARRIER=1")),
        "the exit's barrier was read and acknowledged: {read:?}"
    );
    // Kept generations (#28: the previous one stays) and their record are not leftovers.
    let left: Vec<String> = std::fs::read_dir(sb.path("dest/.config.bootstage"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !(n == ".lock" || n == "generations.json" || n.starts_with("gen-")))
        .collect();
    assert!(left.is_empty(), "no staging dir left: {left:?}");
}

/// The configured watch: `bootstage.watch` in the parameters names each instance's own
/// queue through `{instance_id}`, and its interval replaces the unit's `--watch`.
#[tokio::test(flavor = "multi_thread")]
async fn the_parameters_name_the_queue_per_instance() {
    let bucket = moto().bucket("sqs-params").await;
    let queue = Queue::new("deploys-i-0abc123").await;
    bucket.put("w/app.conf", "v1").await;
    notify(&bucket, &queue).await;
    let sb = Sandbox::new();
    let dest = sb.path("dest/config");
    let templated = queue
        .url
        .replace("deploys-i-0abc123", "deploys-{instance_id}");
    let params = serde_json::json!({"bootstage": {
        "sync": [{"from": "s3://sqs-params/w/", "to": dest}],
        "watch": {"sqs": templated, "interval": "10m"},
    }});
    sb.seed("params.json", &params.to_string());
    sb.seed(
        "instance.json",
        r#"{"source":"flags","instance_id":"i-0abc123"}"#,
    );
    sb.seed("params.env", "");
    sb.seed("hooks.env", "");
    let w = Watcher::start_with(&sb, &["s3-sync", "--watch", "1s"], &[]).await;
    bucket.put("w/app.conf", "v2").await;
    w.next("READY=1");
    assert_eq!(tree(&dest), files(&[("app.conf", "v2")]));
    queue.drained().await;
    let stderr = w.stderr();
    assert!(
        stderr.contains(&format!("queue=\"{}\"", queue.url)) && stderr.contains("interval=10m"),
        "{stderr}"
    );
    assert_eq!(w.stop().await.code(), Some(0));
}

/// A queue URL that cannot be filled in fails the stage before anything is synced.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_queue_url_fails_before_the_first_pass() {
    let bucket = moto().bucket("sqs-bad-url").await;
    bucket.put("w/app.conf", "v1").await;
    let sb = Sandbox::new();
    let dest = sb.path("dest/config");
    for (queue, said) in [
        (
            "http://127.0.0.1:9/123/q-{instance_id}",
            "the queue URL asks for {instance_id}, which this instance's facts do not give",
        ),
        ("sqs-by-name", "\"sqs\" must be a queue URL"),
    ] {
        let mut cmd = sb.command(&[
            "s3-sync",
            "--from",
            "s3://sqs-bad-url/w/",
            "--to",
            dest.to_str().unwrap(),
            "--watch",
            "1s",
            "--sqs",
            queue,
        ]);
        cmd.envs(moto().env());
        let out = common::run(cmd).await;
        common::assert_exit(&out, 65, said);
        assert!(std::fs::symlink_metadata(&dest).is_err());
    }
}
