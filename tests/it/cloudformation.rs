//! `examples/cloudformation/bootstage-group.yaml`, the path of least effort to a group:
//! linted with cfn-lint against AWS's resource schemas (offline), then deployed with
//! `CreateStack` into moto on 127.0.0.1 (with `tests/fixtures/moto_cfn.py`'s additions for
//! what moto's CloudFormation skips) and what it made checked against what bootstage
//! needs: the group and its two hooks named as the user-data names them, the warm pool
//! (or none), the instance role's policy equal to `examples/iam-policy.json`, the
//! user-data valid for `bootstage validate`, and the watch wiring working end to end (the
//! template's queue keeper makes an instance's queue, S3's event reaches it through the
//! topic, the keeper removes it). README's "The CloudFormation template" says what moto's
//! deploy does not prove.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Sandbox;
use common::moto::{Moto, start_cloudformation};
use serde_json::{Value, json};

const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/cloudformation/bootstage-group.yaml"
);
const IAM_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/iam-policy.json");
const INSPECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cfn_inspect.py");

/// One moto with the CloudFormation additions for this module; each test its own stack.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(start_cloudformation)
}

/// cfn-lint at the template: its exit code (0 clean; 2 errors, 4 warnings, bits of it) and
/// what it said. Errors and warnings only (informational I-rules are not shown).
fn cfn_lint(template: &Path) -> (i32, String) {
    let out = Command::new("cfn-lint")
        .args(["--format", "parseable"])
        .args(["--regions", "us-east-1", "eu-west-1", "ap-southeast-2"])
        .arg("--")
        .arg(template)
        .output()
        .expect("cfn-lint (scripts/install-test-deps.sh installs it, pinned, from PyPI)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

#[test]
fn cfn_lint_passes_the_template_with_no_error_or_warning() {
    let (code, said) = cfn_lint(Path::new(TEMPLATE));
    assert_eq!((code, said.as_str()), (0, ""), "cfn-lint found:\n{said}");

    // The lint is live: the same template with a misspelt property and a heartbeat that is
    // not a number fails it.
    let text = std::fs::read_to_string(TEMPLATE).unwrap();
    let broken = text
        .replacen("HeartbeatTimeout: 600", "HeartbeatTimeout: soon", 1)
        .replacen("CapacityRebalance:", "CapacityRebalanced:", 1);
    assert_ne!(broken, text);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("broken.yaml");
    std::fs::write(&copy, broken).unwrap();
    let (code, said) = cfn_lint(&copy);
    assert_eq!(code & 2, 2, "cfn-lint passed a broken template:\n{said}");
    assert!(said.contains("CapacityRebalanced"), "{said}");
    assert!(said.contains("soon"), "{said}");
}

/// `python3 tests/fixtures/cfn_inspect.py ARGS…` against moto: its JSON answer.
fn inspect(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(INSPECT)
        .args(args)
        .envs(moto().env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cfn_inspect.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn cloudformation() -> aws_sdk_cloudformation::Client {
    use aws_sdk_cloudformation::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_cloudformation::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto().url)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    aws_sdk_cloudformation::Client::from_conf(config)
}

async fn autoscaling() -> aws_sdk_autoscaling::Client {
    use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto().url)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    aws_sdk_autoscaling::Client::from_conf(config)
}

/// Creates the stack with `parameters` (ImageId and SubnetIds filled in) and waits until
/// it is complete; its outputs.
async fn deploy(stack: &str, parameters: &[(&str, &str)]) -> BTreeMap<String, String> {
    use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
    let subnets: Vec<String> = serde_json::from_value(inspect(&["subnets"])).unwrap();
    let subnets = subnets[..2].join(",");
    let mut all = vec![("ImageId", "ami-12c6146b"), ("SubnetIds", subnets.as_str())];
    all.extend_from_slice(parameters);
    let cfn = cloudformation().await;
    cfn.create_stack()
        .stack_name(stack)
        .template_body(std::fs::read_to_string(TEMPLATE).unwrap())
        .capabilities(Capability::CapabilityIam)
        .set_parameters(Some(
            all.iter()
                .map(|(k, v)| {
                    Parameter::builder()
                        .parameter_key(*k)
                        .parameter_value(*v)
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let stacks = cfn
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await
            .unwrap();
        let s = &stacks.stacks()[0];
        match s.stack_status() {
            Some(StackStatus::CreateComplete) => {
                return s
                    .outputs()
                    .iter()
                    .map(|o| {
                        let key = o.output_key().unwrap().to_string();
                        (key, o.output_value().unwrap().to_string())
                    })
                    .collect();
            }
            Some(StackStatus::CreateInProgress) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("stack {stack}: {other:?} {:?}", s.stack_status_reason()),
        }
    }
}

/// `examples/iam-policy.json` with its placeholders filled as the stack fills them; every
/// placeholder of the file must be among them.
fn iam_example(fill: &[(&str, &str)]) -> Value {
    let mut text = std::fs::read_to_string(IAM_EXAMPLE).unwrap();
    // Longest first: EXAMPLE-QUEUE-PREFIX before a shorter name could eat its start.
    let mut fill = fill.to_vec();
    fill.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (placeholder, value) in fill {
        text = text.replace(placeholder, value);
    }
    assert!(
        !text.contains("EXAMPLE-"),
        "a placeholder of examples/iam-policy.json the template does not fill:\n{text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// The whole stack, with a warm pool: every resource bootstage relies on is there, agrees
/// with the user-data, and the watch wiring carries an S3 change to an instance's queue.
#[tokio::test(flavor = "multi_thread")]
async fn the_template_deploys_and_makes_what_the_user_data_names() {
    let stack = "shop-web";
    let outputs = deploy(
        stack,
        &[
            ("ConfigBucketName", "shop-web-config"),
            ("MinSize", "1"),
            ("DesiredCapacity", "1"),
            ("AppName", "shop"),
            (
                "AppParameters",
                r#"{"port": 8080, "db": {"password": {"ssm": "/shop/db-password"}}}"#,
            ),
            ("KmsKeyId", "1234abcd-12ab-34cd-56ef-1234567890ab"),
            ("WarmPoolState", "Stopped"),
            ("WarmPoolMinSize", "2"),
            ("OnFailure", "hold"),
        ],
    )
    .await;
    assert_eq!(outputs["GroupName"], stack);
    assert_eq!(outputs["ConfigBucket"], "shop-web-config");
    let made = inspect(&["stack", stack]);
    let resources = &made["resources"];

    // The instance role: the one inline policy is the IAM example, filled in; nothing else.
    let example = iam_example(&[
        ("EXAMPLE-BUCKET", "shop-web-config"),
        ("EXAMPLE-LOGS-BUCKET", "shop-web-config"),
        ("EXAMPLE-PREFIX", "config"),
        ("EXAMPLE-APP", "shop"),
        ("EXAMPLE-KEY-ID", "1234abcd-12ab-34cd-56ef-1234567890ab"),
        ("EXAMPLE-GROUP", stack),
        ("EXAMPLE-QUEUE-PREFIX", "shop-web-watch"),
        ("EXAMPLE-STACK", stack),
    ]);
    assert_eq!(made["role_policies"], json!({ "bootstage": example }));
    assert_eq!(made["role_managed_policies"], json!([]));
    assert_eq!(made["profile_roles"], json!([resources["InstanceRole"]]));
    let lt = &made["launch_template"];
    assert_eq!(lt["profile_arn"], made["profile_arn"]);
    assert_eq!(lt["image_id"], "ami-12c6146b");
    assert_eq!(lt["metadata_options"]["HttpTokens"], "required");

    // The user-data: bootstage accepts it as it is, and the app's parameters are exported.
    let user_data = lt["user_data"].as_str().unwrap();
    let sb = Sandbox::new();
    let file = sb.path("user-data.json");
    std::fs::write(&file, user_data).unwrap();
    let out = sb.run(&["validate", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "bootstage validate: {}", out.stderr);
    for name in ["APP_PORT", "APP_DB_PASSWORD"] {
        assert!(
            out.stdout.lines().any(|l| l == name),
            "{name}: {}",
            out.stdout
        );
    }
    let params: Value = serde_json::from_str(user_data).unwrap();
    let settings = &params["bootstage"];
    assert_eq!(settings["lifecycle"]["asg"]["group"], stack);
    assert_eq!(settings["lifecycle"]["asg"]["on_failure"], "hold");
    assert_eq!(settings["lifecycle"]["cloudformation"]["stack"], stack);
    // The resource bootstage signals is the stack's group.
    let signalled = settings["lifecycle"]["cloudformation"]["resource"]
        .as_str()
        .unwrap();
    assert_eq!(resources[signalled], stack);
    assert_eq!(
        settings["sync"],
        json!([{"from": "s3://shop-web-config/config/", "to": "/srv/shop/config"}])
    );

    // The group, its hooks as the user-data names them, and its warm pool.
    let asg = autoscaling().await;
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(stack)
        .send()
        .await
        .unwrap();
    let group = &groups.auto_scaling_groups()[0];
    assert_eq!(
        (group.min_size(), group.max_size(), group.desired_capacity()),
        (Some(1), Some(2), Some(1))
    );
    assert_eq!(
        group.launch_template().unwrap().launch_template_id(),
        resources["LaunchTemplate"].as_str()
    );
    let hooks = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(stack)
        .send()
        .await
        .unwrap();
    let hooks: BTreeMap<&str, (&str, Option<i32>, &str)> = hooks
        .lifecycle_hooks()
        .iter()
        .map(|h| {
            (
                h.lifecycle_hook_name().unwrap(),
                (
                    h.lifecycle_transition().unwrap(),
                    h.heartbeat_timeout(),
                    h.default_result().unwrap(),
                ),
            )
        })
        .collect();
    let launch = settings["lifecycle"]["asg"]["hook"].as_str().unwrap();
    let termination = settings["lifecycle"]["asg"]["termination_hook"]
        .as_str()
        .unwrap();
    assert_eq!(
        hooks,
        BTreeMap::from([
            (
                launch,
                ("autoscaling:EC2_INSTANCE_LAUNCHING", Some(600), "ABANDON")
            ),
            (
                termination,
                (
                    "autoscaling:EC2_INSTANCE_TERMINATING",
                    Some(120),
                    "CONTINUE"
                )
            ),
        ])
    );
    let pool = asg
        .describe_warm_pool()
        .auto_scaling_group_name(stack)
        .send()
        .await
        .unwrap();
    let pool = pool.warm_pool_configuration().expect("a warm pool");
    assert_eq!(pool.pool_state().map(|s| s.as_str()), Some("Stopped"));
    assert_eq!(pool.min_size(), Some(2));
    assert_eq!(
        pool.instance_reuse_policy()
            .and_then(|p| p.reuse_on_scale_in()),
        Some(true)
    );

    // The events that make and remove queues come from this group, to the keeper; S3 may
    // publish to the topic from the config bucket only.
    assert_eq!(
        made["rule_pattern"],
        json!({"source": ["aws.autoscaling"],
               "detail-type": ["EC2 Instance-launch Lifecycle Action", "EC2 Instance Terminate Successful"],
               "detail": {"AutoScalingGroupName": [stack]}})
    );
    assert_eq!(made["rule_targets"], json!([made["keeper_arn"]]));
    let allowed = &made["topic_policy"]["Statement"][0];
    assert_eq!(allowed["Principal"], json!({"Service": "s3.amazonaws.com"}));
    assert_eq!(
        allowed["Condition"]["ArnLike"]["aws:SourceArn"],
        "arn:aws:s3:::shop-web-config"
    );
    assert_eq!(made["subscriptions"], json!([]));

    // An instance launches: the keeper (the template's own code) makes its queue, under
    // the name the user-data's URL gives it and the role's policy allows.
    let instance = "i-0cf0123456789abcd";
    let said = inspect(&[
        "keeper",
        TEMPLATE,
        stack,
        &json!({"detail-type": "EC2 Instance-launch Lifecycle Action",
                "detail": {"EC2InstanceId": instance, "AutoScalingGroupName": stack}})
        .to_string(),
    ]);
    assert_eq!(said, json!(format!("created shop-web-watch-{instance}")));
    let url = settings["watch"]["sqs"]
        .as_str()
        .unwrap()
        .replace("{instance_id}", instance);
    let name = url.rsplit('/').next().unwrap();
    assert_eq!(
        url,
        format!("https://sqs.us-east-1.amazonaws.com/123456789012/{name}")
    );
    let sqs = moto().sqs().await;
    let queue = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let subscribed = inspect(&["stack", stack])["subscriptions"].clone();
    assert_eq!(
        subscribed.as_array().map(|s| s.len()),
        Some(1),
        "{subscribed}"
    );
    assert_eq!(
        subscribed[0]["endpoint"],
        format!("arn:aws:sqs:us-east-1:123456789012:{name}")
    );
    assert_eq!(subscribed[0]["raw"], true);

    // A change under the prefix reaches the queue as S3's event; one elsewhere does not.
    let s3 = moto().client().await;
    for key in ["elsewhere/app.conf", "config/app.conf"] {
        s3.put_object()
            .bucket("shop-web-config")
            .key(key)
            .body(b"port = 8080\n".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let mut keys = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while keys.is_empty() && Instant::now() < until {
        let got = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            let event: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            if event["Event"] == "s3:TestEvent" {
                continue;
            }
            // S3 writes the key URL-encoded (moto encodes its `/` too).
            let key = event["Records"][0]["s3"]["object"]["key"].as_str().unwrap();
            keys.push(
                percent_encoding::percent_decode_str(key)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    assert_eq!(keys, ["config/app.conf"]);

    // The instance is terminated: its queue and its subscription go.
    let said = inspect(&[
        "keeper",
        TEMPLATE,
        stack,
        &json!({"detail-type": "EC2 Instance Terminate Successful",
                "detail": {"EC2InstanceId": instance, "AutoScalingGroupName": stack}})
        .to_string(),
    ]);
    assert_eq!(said, json!(format!("deleted shop-web-watch-{instance}")));
    assert!(
        sqs.get_queue_url().queue_name(name).send().await.is_err(),
        "the queue is still there"
    );
    assert_eq!(inspect(&["stack", stack])["subscriptions"], json!([]));
}

/// The defaults: no warm pool (the condition leaves the resource out), and Session
/// Manager's policy beside bootstage's, never in it.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_there_is_no_warm_pool_and_the_role_holds_only_the_example() {
    let stack = "plain";
    deploy(
        stack,
        &[
            ("ConfigBucketName", "plain-config"),
            ("SessionManager", "true"),
        ],
    )
    .await;
    let made = inspect(&["stack", stack]);
    assert!(made["resources"].get("WarmPool").is_none(), "{made}");
    let asg = autoscaling().await;
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(stack)
        .send()
        .await
        .unwrap();
    let group = &groups.auto_scaling_groups()[0];
    // No instance until the config is uploaded (README's quickstart).
    assert_eq!(
        (group.min_size(), group.max_size(), group.desired_capacity()),
        (Some(0), Some(2), Some(0))
    );
    let pool = asg
        .describe_warm_pool()
        .auto_scaling_group_name(stack)
        .send()
        .await
        .unwrap();
    assert!(pool.warm_pool_configuration().is_none());
    let example = iam_example(&[
        ("EXAMPLE-BUCKET", "plain-config"),
        ("EXAMPLE-LOGS-BUCKET", "plain-config"),
        ("EXAMPLE-PREFIX", "config"),
        ("EXAMPLE-APP", "myapp"),
        ("EXAMPLE-KEY-ID", "none"),
        ("EXAMPLE-GROUP", stack),
        ("EXAMPLE-QUEUE-PREFIX", "plain-watch"),
        ("EXAMPLE-STACK", stack),
    ]);
    assert_eq!(made["role_policies"], json!({ "bootstage": example }));
    assert_eq!(
        made["role_managed_policies"],
        json!(["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"])
    );
    let params: Value =
        serde_json::from_str(made["launch_template"]["user_data"].as_str().unwrap()).unwrap();
    assert_eq!(params["app"], json!({}));
    assert_eq!(
        params["bootstage"]["lifecycle"]["asg"]["on_failure"],
        "abandon"
    );
}

const PACKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/packer/bootstage.pkr.hcl"
);
const INSTALL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/image/install-bootstage.sh"
);

/// The Packer recipe as python-hcl2 parses it, as JSON with HCL's quotes taken off the
/// strings and its `__is_block__` marks dropped.
fn packer_recipe() -> Value {
    const PARSE: &str = r#"
import json, sys
import hcl2

def plain(v):
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items() if k != "__is_block__"}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v

with open(sys.argv[1]) as f:
    print(json.dumps(plain(hcl2.load(f))))
"#;
    let out = Command::new("python3")
        .args(["-c", PARSE, PACKER])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python-hcl2 (scripts/install-test-deps.sh installs it, pinned) did not parse {PACKER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The image recipe builds Amazon Linux 2023 and Debian, both architectures, uploads the
/// packages of scripts/build-packages.sh and runs the install script on them.
#[test]
fn the_packer_recipe_names_both_distributions_both_architectures_and_the_install_step() {
    let recipe = packer_recipe();
    let mut sources = BTreeMap::new();
    for source in recipe["source"].as_array().unwrap() {
        for (name, source) in source["amazon-ebs"].as_object().unwrap() {
            let filter = &source["source_ami_filter"][0];
            sources.insert(
                name.clone(),
                (
                    filter["filters"]["name"].as_str().unwrap().to_string(),
                    filter["filters"]["architecture"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    source["instance_type"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    let want = |name: &str, arch: &str, instance: &str| {
        (name.to_string(), arch.to_string(), instance.to_string())
    };
    assert_eq!(
        sources,
        BTreeMap::from([
            (
                "al2023-arm64".to_string(),
                want("al2023-ami-2023.*-kernel-*-arm64", "arm64", "t4g.small")
            ),
            (
                "al2023-x86_64".to_string(),
                want("al2023-ami-2023.*-kernel-*-x86_64", "x86_64", "t3.small")
            ),
            (
                "debian12-arm64".to_string(),
                want("debian-12-arm64-*", "arm64", "t4g.small")
            ),
            (
                "debian12-x86_64".to_string(),
                want("debian-12-amd64-*", "x86_64", "t3.small")
            ),
        ])
    );
    let build = &recipe["build"][0];
    let built: Vec<&str> = build["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let expected: Vec<String> = sources
        .keys()
        .map(|k| format!("source.amazon-ebs.{k}"))
        .collect();
    let mut sorted = built.clone();
    sorted.sort();
    assert_eq!(sorted, expected);

    // In order: the packages directory (its contents, SHA256SUMS among them), the script,
    // then the script run on them.
    let steps: Vec<(String, Value)> = build["provisioner"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p.as_object().unwrap().clone())
        .collect();
    let uploads: Vec<(&str, &str)> = steps
        .iter()
        .filter(|(kind, _)| kind == "file")
        .map(|(_, p)| {
            (
                p["source"].as_str().unwrap(),
                p["destination"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        uploads,
        [
            ("${var.packages_dir}/", "/tmp/bootstage-packages"),
            (
                "${path.root}/../image/install-bootstage.sh",
                "/tmp/install-bootstage.sh"
            ),
        ]
    );
    let script = Path::new(PACKER)
        .parent()
        .unwrap()
        .join("../image/install-bootstage.sh");
    assert!(script.is_file(), "{}", script.display());
    let install = &steps[steps.len() - 2].1["inline"][0];
    assert_eq!(
        install,
        "sudo APP_UNIT=${var.app_unit} sh /tmp/install-bootstage.sh /tmp/bootstage-packages"
    );
    // The last step before the capture: nothing of the build instance travels.
    assert_eq!(
        steps.last().unwrap().1["inline"],
        serde_json::json!(["sudo bootstage image prepare"])
    );
    let default_dir = recipe["variable"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v.get("packages_dir"))
        .unwrap();
    // scripts/build-packages.sh's default output.
    assert_eq!(default_dir["default"], "target/packages");
    let build_script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-packages.sh"
    ))
    .unwrap();
    assert!(build_script.contains("output=target/packages"));
    assert!(build_script.contains("sha256sum -- *.deb *.rpm > SHA256SUMS"));
}

/// The plain script: valid for sh, dash and bash; it installs nothing that is not in
/// SHA256SUMS with its checksum (checked here with `--check-only`, which stops there).
#[test]
fn the_install_script_parses_and_refuses_a_package_its_checksums_do_not_vouch_for() {
    for shell in ["sh", "dash", "bash"] {
        let out = Command::new(shell).args(["-n", INSTALL]).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The package this machine would take: the tests run on Debian (apt-get).
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no package for {other}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let name = format!("bootstage_1.2.3-1_{arch}.deb");
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    std::fs::write(dir.path().join(&name), b"the package").unwrap();
    std::fs::write(
        dir.path().join(format!("bootstage_1.2.3-1_{other}.deb")),
        b"another",
    )
    .unwrap();
    let sha = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let check = || {
        let out = Command::new("sh")
            .args([INSTALL, "--check-only"])
            .arg(dir.path())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), said)
    };
    let sums = dir.path().join("SHA256SUMS");

    let (code, said) = check();
    assert_eq!(code, 66, "{said}");
    assert!(said.contains("SHA256SUMS is missing"), "{said}");

    std::fs::write(&sums, format!("{}  other.rpm\n", sha(b"x"))).unwrap();
    let (code, said) = check();
    assert_eq!(code, 65, "{said}");
    assert!(
        said.contains(&format!("{name} is not listed in SHA256SUMS")),
        "{said}"
    );

    std::fs::write(&sums, format!("{}  {name}\n", sha(b"tampered"))).unwrap();
    let (code, said) = check();
    assert_eq!(code, 65, "{said}");
    assert!(said.contains("does not match its checksum"), "{said}");

    std::fs::write(&sums, format!("{}  {name}\n", sha(b"the package"))).unwrap();
    let (code, said) = check();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains(&format!("{name}: OK")), "{said}");
}
