//! A real S3-compatible server for the tests: moto's server on 127.0.0.1, one per test
//! binary, killed with it. Tests isolate themselves by bucket name, and count requests
//! from moto's own request log.

use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumType;

pub struct Moto {
    pub url: String,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    sentinel: AtomicU64,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

pub fn moto() -> &'static Moto {
    MOTO.get_or_init(|| start_with(&[]))
}

/// A moto server of its own, with extra environment (`INITIAL_NO_AUTH_ACTION_COUNT` …).
pub fn start_with(env: &[(&str, String)]) -> Moto {
    start_program(&["-m", "moto.server"], env)
}

/// A moto server of its own with the CloudFormation additions the example template needs
/// (`tests/fixtures/moto_cfn.py` says which, and why each is only moto's own API).
pub fn start_cloudformation() -> Moto {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/moto_cfn.py");
    start_program(&[script], &[])
}

/// `python3 ARGS… -H 127.0.0.1 -p PORT`: moto's server, or a script that runs it.
fn start_program(program: &[&str], env: &[(&str, String)]) -> Moto {
    let program: Vec<String> = program.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let (ready, wait) = std::sync::mpsc::channel();
    let lines = log.clone();
    // The server is spawned by this thread, which lives as long as the server: the kernel's
    // parent-death signal follows the spawning *thread*, and it must not fire while tests run.
    std::thread::spawn(move || {
        let mut cmd = Command::new("python3");
        cmd.args(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the server dies with this test process.
        unsafe {
            cmd.pre_exec(|| {
                nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .expect("python3 -m moto.server (scripts/install-test-deps.sh installs it)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut ready = Some(ready);
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("Running on")
                && let Some(r) = ready.take()
            {
                let _ = r.send(());
            }
            // `… "GET /b/k HTTP/1.1" 200 -`: the request, then its status.
            let mut quoted = line.split('"');
            if let Some(request) = quoted.nth(1) {
                let status = quoted.next().unwrap_or("").split_whitespace().next();
                let entry = format!("{request} {}", status.unwrap_or("-"));
                lines.0.lock().unwrap().push(entry);
                lines.1.notify_all();
            }
        }
        let _ = child.wait();
    });
    wait.recv_timeout(std::time::Duration::from_secs(60))
        .expect("moto started");
    Moto {
        url: format!("http://127.0.0.1:{port}"),
        log,
        sentinel: AtomicU64::new(0),
    }
}

/// Request counts for one bucket since `mark`, by method; LIST = GET on the bucket itself.
/// An object GET answered 304 Not Modified is counted apart from `get`: no body was sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub list: usize,
    pub get: usize,
    pub not_modified: usize,
    pub head: usize,
    pub other: usize,
}

impl Moto {
    pub fn mark(&self) -> usize {
        self.settle();
        self.log.0.lock().unwrap().len()
    }

    /// moto logs a request after answering it: send one more request and wait until it is
    /// logged, so every earlier request is in the log too.
    fn settle(&self) {
        let path = format!(
            "/__sentinel_{}",
            self.sentinel.fetch_add(1, Ordering::SeqCst)
        );
        let mut stream =
            std::net::TcpStream::connect(self.url.trim_start_matches("http://")).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let _ = stream.read_to_end(&mut Vec::new());
        let (log, logged) = &*self.log;
        let log = log.lock().unwrap();
        let (_guard, timeout) = logged
            .wait_timeout_while(log, Duration::from_secs(10), |log| {
                !log.iter().rev().any(|l| l.contains(&path))
            })
            .unwrap();
        assert!(!timeout.timed_out(), "moto never logged {path}");
    }

    pub fn counts(&self, bucket: &str, since: usize) -> Counts {
        self.settle();
        tally(&self.log.0.lock().unwrap()[since..], bucket)
    }

    /// Waits until the requests for `bucket` that moto has logged since `since` satisfy
    /// `done`, and says whether they did within `timeout`. Unlike `counts` it sends nothing
    /// and does not settle: it watches a run still under way, and a request is logged only
    /// once moto has answered it. Blocks the thread.
    pub fn wait_for(
        &self,
        bucket: &str,
        since: usize,
        timeout: Duration,
        done: impl Fn(&Counts) -> bool,
    ) -> bool {
        let (log, logged) = &*self.log;
        let log = log.lock().unwrap();
        let (_guard, waited) = logged
            .wait_timeout_while(log, timeout, |log| !done(&tally(&log[since..], bucket)))
            .unwrap();
        !waited.timed_out()
    }

    /// An S3 client for fixtures, pointed at moto.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// A Secrets Manager client for fixtures, pointed at moto.
    pub async fn secretsmanager(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// An SSM client for fixtures, pointed at moto.
    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// An SQS client for fixtures, pointed at moto.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// A new SQS queue on moto: its URL and ARN.
    pub async fn queue(&self, name: &str) -> (String, String) {
        use aws_sdk_sqs::types::QueueAttributeName;
        let sqs = self.sqs().await;
        let created = sqs.create_queue().queue_name(name).send().await.unwrap();
        let url = created.queue_url().unwrap().to_string();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        let arn = attrs.attributes().unwrap()[&QueueAttributeName::QueueArn].clone();
        (url, arn)
    }

    pub async fn bucket(&self, name: &str) -> Bucket {
        let client = self.client().await;
        client.create_bucket().bucket(name).send().await.unwrap();
        Bucket {
            client,
            name: name.to_string(),
        }
    }

    /// The environment a bootstage process needs to reach moto and nothing else.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ]
    }
}

/// Request counts for `bucket` in `log` (see `Counts`).
fn tally(log: &[String], bucket: &str) -> Counts {
    let mut c = Counts::default();
    for request in log {
        let mut parts = request.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        // `/bucket`, `/bucket/` or `/bucket/key`, not `/bucket-other/…`.
        let Some(rest) = path
            .strip_prefix(&format!("/{bucket}"))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            continue;
        };
        let status = request.rsplit(' ').next().unwrap_or("");
        match (method, rest) {
            ("GET", "" | "/") => c.list += 1,
            ("GET", _) if status == "304" => c.not_modified += 1,
            ("GET", _) => c.get += 1,
            ("HEAD", _) => c.head += 1,
            _ => c.other += 1,
        }
    }
    c
}

pub struct Bucket {
    pub client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body: Vec<u8> = body.into();
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }

    /// An object uploaded with no checksum at all (the SDK's `WhenRequired`: PutObject
    /// does not require one), as aws-cli v1 or a raw PUT would upload it: moto then keeps
    /// none, and a GET answers only the ETag (the body's MD5).
    pub async fn put_without_checksum(&self, key: &str, body: impl Into<Vec<u8>>) {
        use aws_sdk_s3::config::RequestChecksumCalculation;
        let body: Vec<u8> = body.into();
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body))
            .customize()
            .config_override(
                aws_sdk_s3::Config::builder()
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired),
            )
            .send()
            .await
            .unwrap();
    }

    /// An object uploaded with a CRC64NVME checksum, which the SDK computes; moto keeps
    /// the value it is sent (it computes none without `awscrt`) and answers it on a GET
    /// with checksum mode.
    pub async fn put_crc64nvme(&self, key: &str, body: impl Into<Vec<u8>>) {
        use aws_sdk_s3::types::ChecksumAlgorithm;
        let body: Vec<u8> = body.into();
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }

    /// S3 sends an event to the queue `queue_arn` for every object created or removed.
    pub async fn notify(&self, queue_arn: &str) {
        use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
        let to_queue = QueueConfiguration::builder()
            .queue_arn(queue_arn)
            .events(Event::S3ObjectCreated)
            .events(Event::S3ObjectRemoved)
            .build()
            .unwrap();
        self.client
            .put_bucket_notification_configuration()
            .bucket(&self.name)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(to_queue)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    pub async fn delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .unwrap();
    }

    /// A multipart object of `parts` (each but the last at least 5 MiB).
    pub async fn put_multipart(&self, key: &str, parts: &[Vec<u8>]) {
        self.multipart(key, parts, None).await
    }

    /// The same, with a full-object CRC32 checksum (not a composite of the parts').
    pub async fn put_multipart_crc32(&self, key: &str, parts: &[Vec<u8>]) {
        self.multipart(key, parts, Some(ChecksumType::FullObject))
            .await
    }

    /// The same, with a composite CRC32 checksum (a checksum of the parts' checksums,
    /// answered as `…-N` with `x-amz-checksum-type: COMPOSITE`).
    pub async fn put_multipart_composite_crc32(&self, key: &str, parts: &[Vec<u8>]) {
        self.multipart(key, parts, Some(ChecksumType::Composite))
            .await
    }

    /// With `crc32`, a CRC32 of that type.
    async fn multipart(&self, key: &str, parts: &[Vec<u8>], crc32: Option<ChecksumType>) {
        use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
        let algorithm = crc32.is_some().then_some(ChecksumAlgorithm::Crc32);
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .set_checksum_algorithm(algorithm.clone())
            .set_checksum_type(crc32)
            .send()
            .await
            .unwrap();
        let id = upload.upload_id().unwrap();
        let mut done = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.name)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .set_checksum_algorithm(algorithm.clone())
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .unwrap();
            done.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(out.e_tag().unwrap())
                    .build(),
            );
        }
        // moto answers 200 with the root element `CompleteMultipartUploadResponse`, which
        // the Rust SDK does not accept (it wants `…Result`); the upload is complete all the
        // same, which the sync test then checks byte for byte. That answer, naming this key,
        // is the one error let through: anything else fails the fixture.
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = completed
            && !moto_completion_quirk(&e, key)
        {
            panic!("CompleteMultipartUpload of {key}: {e:?}");
        }
    }
}

/// The error is the SDK refusing moto's successful answer's root element: a 200 whose body
/// is `<CompleteMultipartUploadResponse …>` naming `key`, decoded as no S3 error code.
fn moto_completion_quirk(
    e: &aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
    key: &str,
) -> bool {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let aws_sdk_s3::error::SdkError::ServiceError(service) = e else {
        return false;
    };
    let raw = service.raw();
    let body = raw
        .body()
        .bytes()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    raw.status().as_u16() == 200
        && service.err().code().is_none()
        && body.contains("<CompleteMultipartUploadResponse ")
        && body.contains(&format!("<Key>{key}</Key>"))
}
