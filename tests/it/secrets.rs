//! Secrets and parameters from SSM and Secrets Manager, resolved by the real binary's
//! metadata stage against moto on 127.0.0.1, through the fault proxy (which counts calls
//! per API by their `X-Amz-Target` and can throttle them).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::faults::{self, Faults};
use common::moto::moto;
use common::{Outcome, Sandbox, assert_exit, mode, shell_readback};
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";

async fn ssm() -> aws_sdk_ssm::Client {
    moto().ssm().await
}

async fn secretsmanager() -> aws_sdk_secretsmanager::Client {
    moto().secretsmanager().await
}

async fn put_param(name: &str, value: &str, kind: aws_sdk_ssm::types::ParameterType) {
    ssm()
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(kind)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

async fn put_secret(name: &str, value: &str) {
    secretsmanager()
        .await
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

/// Runs the metadata stage on `params` as user-data, with AWS pointed at `endpoint`.
async fn metadata(sandbox: &Sandbox, endpoint: &str, params: &Value, timeout: &str) -> Outcome {
    let file = sandbox.path("user-data.json");
    std::fs::write(&file, params.to_string()).unwrap();
    let mut cmd = sandbox.command(&[
        "metadata",
        "--user-data-file",
        file.to_str().unwrap(),
        "--fact",
        "instance-id=i-0secrets",
        "--timeout",
        timeout,
    ]);
    for (k, v) in moto().env() {
        cmd.env(k, v);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint);
    common::run(cmd).await
}

/// Calls per API that passed the proxy (`AmazonSSM.GetParameters` → 2 …).
fn calls(proxy: &faults::Proxy) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for target in proxy.faults.targets.lock().unwrap().iter() {
        *out.entry(target.clone()).or_default() += 1;
    }
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// No secret value in anything bootstage printed or recorded.
fn assert_nowhere(sandbox: &Sandbox, out: &Outcome, secrets: &[&str]) {
    let status = std::fs::read_to_string(sandbox.state().join("status/metadata.json")).unwrap();
    for secret in secrets {
        assert!(
            !out.stderr.contains(secret),
            "{secret:?} in the log:\n{}",
            out.stderr
        );
        assert!(!out.stdout.contains(secret), "{secret:?} on stdout");
        assert!(!status.contains(secret), "{secret:?} in the status record");
    }
}

#[tokio::test]
async fn references_become_parameters_and_credentials() {
    use aws_sdk_ssm::types::ParameterType::{SecureString, String as Plain, StringList};
    let password = "pa$$ \"word\" `x` \\ \n line two";
    put_param("/t1/db-password", password, SecureString).await;
    put_param("/t1/host", "db.internal", Plain).await;
    put_param("/t1/list", "a,b,c", StringList).await;
    put_param("/t1/ver", "v1", Plain).await;
    put_param("/t1/ver", "v2", Plain).await;
    ssm()
        .await
        .label_parameter_version()
        .name("/t1/ver")
        .parameter_version(2)
        .labels("prod")
        .send()
        .await
        .unwrap();
    put_secret("t1/api", r#"{"token":"tok-1","port":5432}"#).await;
    put_secret("t1/hidden", "only-in-a-file").await;

    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    let params = json!({
        "db": {
            "password": {"ssm": "/t1/db-password"},
            "host": {"ssm": format!("arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/t1/host")},
        },
        "list": {"ssm": "/t1/list"},
        "old": {"ssm": "/t1/ver:1"},
        "prod": {"ssm": "/t1/ver:prod"},
        "api": {
            "token": {"secretsmanager": "t1/api", "json_key": "token"},
            "port": {"secretsmanager": "t1/api", "json_key": "port"},
        },
        "hidden": {"secretsmanager": "t1/hidden", "env": false},
        "plain": "ssm",
    });
    let out = metadata(&sandbox, &proxy.url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    assert_eq!(
        read_json(&sandbox.state().join("params.json")),
        json!({
            "db": {"password": password, "host": "db.internal"},
            "list": "a,b,c",
            "old": "v1",
            "prod": "v2",
            "api": {"token": "tok-1", "port": "5432"},
            "hidden": {"credential": "hidden"},
            "plain": "ssm",
        })
    );
    let env = sandbox.state().join("params.env");
    for shell in ["dash", "bash"] {
        let vars = shell_readback(shell, &env);
        let params: BTreeMap<&str, &str> = vars
            .iter()
            .filter(|(k, _)| !k.starts_with("BOOTSTAGE_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            params,
            BTreeMap::from([
                ("API_PORT", "5432"),
                ("API_TOKEN", "tok-1"),
                ("DB_HOST", "db.internal"),
                ("DB_PASSWORD", password),
                ("LIST", "a,b,c"),
                ("OLD", "v1"),
                ("PLAIN", "ssm"),
                ("PROD", "v2"),
            ]),
            "{shell}"
        );
    }
    let creds = sandbox.state().join("credentials");
    assert_eq!(mode(&creds), 0o700);
    let files: BTreeMap<String, String> = std::fs::read_dir(&creds)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert_eq!(mode(&e.path()), 0o600);
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    assert_eq!(
        files,
        BTreeMap::from([
            ("api.port".to_string(), "5432".to_string()),
            ("api.token".into(), "tok-1".into()),
            ("db.host".into(), "db.internal".into()),
            ("db.password".into(), password.into()),
            ("hidden".into(), "only-in-a-file".into()),
            ("list".into(), "a,b,c".into()),
            ("old".into(), "v1".into()),
            ("prod".into(), "v2".into()),
        ])
    );
    // Two plain names in one GetParameters call; a version, a label and an ARN one
    // GetParameter each; one GetSecretValue per secret.
    assert_eq!(
        calls(&proxy),
        BTreeMap::from([
            ("AmazonSSM.GetParameter".to_string(), 3),
            ("AmazonSSM.GetParameters".to_string(), 1),
            ("secretsmanager.GetSecretValue".to_string(), 2),
        ])
    );
    assert!(
        out.stderr.contains("references=8") && out.stderr.contains("get_parameters=1"),
        "{}",
        out.stderr
    );
    assert_nowhere(
        &sandbox,
        &out,
        &[password, "tok-1", "only-in-a-file", "db.internal"],
    );

    // `env: false` stays out of `query` too.
    let query = sandbox.run(&["query", "hidden"]).await;
    assert_eq!(
        (query.code, query.stdout.as_str()),
        (0, "{\n  \"credential\": \"hidden\"\n}\n")
    );
    let all = sandbox.run(&["query", "--all"]).await;
    assert!(!all.stdout.contains("only-in-a-file"), "{}", all.stdout);
}

#[tokio::test]
async fn twenty_five_references_take_three_get_parameters_calls() {
    let mut params = serde_json::Map::new();
    for i in 0..25 {
        let name = format!("/t2/p{i:02}");
        put_param(
            &name,
            &format!("value-{i}"),
            aws_sdk_ssm::types::ParameterType::String,
        )
        .await;
        params.insert(format!("p{i:02}"), json!({ "ssm": name }));
    }
    // The same name twice is fetched once.
    params.insert("again".into(), json!({"ssm": "/t2/p00"}));
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    let out = metadata(&sandbox, &proxy.url, &Value::Object(params), "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        calls(&proxy),
        BTreeMap::from([("AmazonSSM.GetParameters".to_string(), 3)])
    );
    let json = read_json(&sandbox.state().join("params.json"));
    for i in 0..25 {
        assert_eq!(json[format!("p{i:02}")], json!(format!("value-{i}")));
    }
    assert_eq!(json["again"], json!("value-0"));
}

#[tokio::test]
async fn an_import_pages_to_the_end_and_user_data_wins() {
    use aws_sdk_ssm::types::ParameterType::{SecureString, String as Plain};
    for i in 0..20 {
        put_param(&format!("/t3/app/k{i:02}"), &format!("v{i}"), Plain).await;
    }
    put_param("/t3/app/db/password", "imported-secret", SecureString).await;
    put_param("/t3/app/db/host", "from-ssm", Plain).await;
    put_param("/t3/app/db/port", "5432", Plain).await;
    put_param("/t3/other/x", "not-under-the-path", Plain).await;

    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    let params = json!({
        "bootstage": {"import": [{"ssm_path": "/t3/app/", "recursive": true}]},
        "db": {"host": "from-user-data"},
    });
    let out = metadata(&sandbox, &proxy.url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = read_json(&sandbox.state().join("params.json"));
    let mut expected = serde_json::Map::new();
    for i in 0..20 {
        expected.insert(format!("k{i:02}"), json!(format!("v{i}")));
    }
    expected.insert(
        "db".into(),
        json!({"host": "from-user-data", "password": "imported-secret", "port": "5432"}),
    );
    expected.insert("bootstage".into(), params["bootstage"].clone());
    assert_eq!(json, Value::Object(expected));
    // 23 parameters, 10 a page: three pages, the last NextToken followed.
    assert_eq!(
        calls(&proxy),
        BTreeMap::from([("AmazonSSM.GetParametersByPath".to_string(), 3)])
    );
    // The SecureString is a credential too; the user-data key is named, its value never.
    let creds = sandbox.state().join("credentials");
    assert_eq!(
        std::fs::read_to_string(creds.join("db.password")).unwrap(),
        "imported-secret"
    );
    assert_eq!(std::fs::read_dir(&creds).unwrap().count(), 1);
    assert!(
        out.stderr
            .contains("user-data (or an earlier import) sets this key: the imported value is not used key=\"db.host\""),
        "{}",
        out.stderr
    );
    assert_nowhere(&sandbox, &out, &["imported-secret", "from-ssm"]);
}

#[tokio::test]
async fn a_missing_parameter_or_secret_fails_with_65_and_keeps_the_old_files() {
    put_param("/t4/there", "x", aws_sdk_ssm::types::ParameterType::String).await;
    put_secret("t4/json", r#"{"a":"1"}"#).await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    sandbox.seed("params.json", "old json\n");
    sandbox.seed("params.env", "OLD=\"env\"\n");
    let cases = [
        (
            json!({"a": {"ssm": "/t4/there"}, "b": {"ssm": "/t4/nope"}}),
            "SSM parameter \"/t4/nope\" does not exist (or is not visible to this instance's role)",
        ),
        (
            json!({"a": {"secretsmanager": "t4/nope"}}),
            "secret \"t4/nope\" does not exist (or is not visible to this instance's role)",
        ),
        (
            json!({"a": {"secretsmanager": "t4/json", "json_key": "b"}}),
            "secret \"t4/json\" key \"b\": the secret is not a JSON object with the key \"b\"",
        ),
        (
            json!({"a": {"ssm": "/t4/there", "decrypt": true}}),
            "parameter \"a\": a \"ssm\" reference cannot have the key \"decrypt\" (allowed: ssm, env)",
        ),
    ];
    for (params, message) in cases {
        let out = metadata(&sandbox, &proxy.url, &params, "20s").await;
        assert_exit(&out, 65, message);
        assert_eq!(sandbox.read("params.json").unwrap(), "old json\n");
        assert_eq!(sandbox.read("params.env").unwrap(), "OLD=\"env\"\n");
        assert!(!sandbox.state().join("instance.json").exists());
        assert!(!sandbox.state().join("credentials").exists());
    }
}

#[tokio::test]
async fn throttling_is_retried_and_a_lasting_one_ends_at_the_deadline() {
    put_param(
        "/t5/p",
        "throttled-value",
        aws_sdk_ssm::types::ParameterType::String,
    )
    .await;
    let params = json!({"p": {"ssm": "/t5/p"}});
    let faults = Faults::default();
    faults
        .throttle
        .store(4, std::sync::atomic::Ordering::SeqCst);
    let proxy = faults::start(&moto().url, faults).await;
    let sandbox = Sandbox::new();
    let out = metadata(&sandbox, &proxy.url, &params, "30s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        read_json(&sandbox.state().join("params.json"))["p"],
        "throttled-value"
    );
    assert!(
        out.stderr
            .contains("ssm:GetParameters: ThrottlingException: Rate exceeded; retrying in"),
        "{}",
        out.stderr
    );
    assert_eq!(calls(&proxy)["AmazonSSM.GetParameters"], 5);

    let faults = Faults::default();
    faults
        .throttle
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let proxy = faults::start(&moto().url, faults).await;
    let sandbox = Sandbox::new();
    let out = metadata(&sandbox, &proxy.url, &params, "3s").await;
    assert_exit(
        &out,
        75,
        "ssm:GetParameters did not succeed before the deadline: ThrottlingException: Rate exceeded",
    );
    assert!(
        out.elapsed < std::time::Duration::from_secs(10),
        "{:?}",
        out.elapsed
    );
    assert!(!sandbox.state().join("params.json").exists());
}

#[tokio::test]
async fn a_secret_that_leaves_the_parameters_leaves_the_machine() {
    put_secret("t6/a", "first-secret").await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    let out = metadata(
        &sandbox,
        &proxy.url,
        &json!({"a": {"secretsmanager": "t6/a"}}),
        "20s",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let creds = sandbox.state().join("credentials");
    assert_eq!(
        std::fs::read_to_string(creds.join("a")).unwrap(),
        "first-secret"
    );
    let out = metadata(&sandbox, &proxy.url, &json!({"b": "plain"}), "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&creds).unwrap().count(), 0);
    // No reference, no AWS call at all.
    assert_eq!(calls(&proxy)["secretsmanager.GetSecretValue"], 1);
}

/// The bootstage command as uid/gid 65534 (an app's `User=`), with the sandbox's state dir.
fn as_app_user(sandbox: &Sandbox, args: &[&str]) -> tokio::process::Command {
    let setpriv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    sandbox.command_under(&setpriv, args)
}

/// A directory only the app user can read, as systemd's `$CREDENTIALS_DIRECTORY` is.
fn credentials_dir(sandbox: &Sandbox, files: &[(&str, &Path)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = sandbox.path("creds");
    std::fs::create_dir(&dir).unwrap();
    for (name, from) in files {
        std::fs::copy(from, dir.join(name)).unwrap();
        std::os::unix::fs::chown(dir.join(name), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    dir
}

#[tokio::test]
async fn an_app_under_its_own_user_reads_the_parameters_through_credentials() {
    use std::os::unix::fs::PermissionsExt;
    put_secret("t7/db", "app-user-secret").await;
    let proxy = faults::start(&moto().url, Faults::default()).await;
    let sandbox = Sandbox::new();
    // The sandbox is traversable, the state dir stays root's 0700, as /run/bootstage is.
    std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let params = json!({"db": {"password": {"secretsmanager": "t7/db"}}, "port": 8080});
    let out = metadata(&sandbox, &proxy.url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before: Vec<_> = std::fs::read_dir(sandbox.state())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    // Without the credential: 77, the lines to add, and no stage run.
    let app = [
        "launch",
        "--",
        "/bin/sh",
        "-c",
        "echo \"$DB_PASSWORD:$PORT\"",
    ];
    let out = common::run(as_app_user(&sandbox, &app)).await;
    let params_env = sandbox.state().join("params.env");
    assert_exit(
        &out,
        77,
        &format!(
            "cannot read {} as uid 65534: it is root's. Give the app's unit these lines:\n  Requires=bootstage-in-service.target\n  After=bootstage-in-service.target\n  LoadCredential=bootstage.env:{}",
            params_env.display(),
            params_env.display()
        ),
    );
    let after: Vec<_> = std::fs::read_dir(sandbox.state())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);

    // With it: the app gets every parameter, exactly, and no stage runs.
    let creds = credentials_dir(
        &sandbox,
        &[
            ("bootstage.env", &params_env),
            (
                "bootstage.params.json",
                &sandbox.state().join("params.json"),
            ),
            (
                "bootstage.instance.json",
                &sandbox.state().join("instance.json"),
            ),
        ],
    );
    let mut cmd = as_app_user(&sandbox, &app);
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let out = common::run(cmd).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "app-user-secret:8080\n"),
        "{}",
        out.stderr
    );

    // `query` reads through the credentials too, and without them says it may not.
    let mut cmd = as_app_user(&sandbox, &["query", "port"]);
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let out = common::run(cmd).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "8080\n"),
        "{}",
        out.stderr
    );
    let out = common::run(as_app_user(&sandbox, &["query", "port"])).await;
    assert_eq!((out.code, out.stdout.as_str()), (77, ""), "{}", out.stderr);
}

/// `python3 tests/fixtures/iam.py ARGS…`, its stdout.
fn iam_fixture(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/iam.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iam.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// examples/iam-policy.json with this test's names, less `without` (an action).
fn policy(without: Option<&str>) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/iam-policy.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("EXAMPLE-BUCKET", "iam-bucket")
        .replace("EXAMPLE-PREFIX", "config")
        .replace("EXAMPLE-APP", "shop")
        .replace("EXAMPLE-QUEUE-PREFIX", "iam-queue");
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    // moto matches SSM and Secrets Manager resources only for a plain GetParameter (a
    // batch, a versioned name or a secret is matched against something else): those
    // statements keep their exact actions here, with `*` as the resource. S3's resources
    // stay as shipped.
    for statement in doc["Statement"].as_array_mut().unwrap() {
        let actions = statement["Action"].to_string();
        if actions.contains("ssm:")
            || actions.contains("secretsmanager:")
            || actions.contains("sqs:")
        {
            statement["Resource"] = json!("*");
        }
    }
    if let Some(action) = without {
        for statement in doc["Statement"].as_array_mut().unwrap() {
            let actions = statement["Action"].as_array_mut().unwrap();
            actions.retain(|a| a != action);
        }
        doc["Statement"]
            .as_array_mut()
            .unwrap()
            .retain(|s| !s["Action"].as_array().unwrap().is_empty());
    }
    doc.to_string()
}

/// The shipped least-privilege policy is enough for every call bootstage makes, and each
/// of its actions is needed: without it, the stage that needs it fails naming it.
#[tokio::test]
async fn the_example_iam_policy_is_exactly_enough() {
    let count = iam_fixture(&["count"]);
    let server =
        common::moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", count.trim().to_string())]);
    let policy_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy_file.path(), policy(None)).unwrap();
    let keys: Value = serde_json::from_str(&iam_fixture(&[
        "setup",
        &server.url,
        policy_file.path().to_str().unwrap(),
        "iam-bucket",
    ]))
    .unwrap();
    let key = |who: &str, i: usize| keys[who][i].as_str().unwrap().to_string();
    let set_policy = |without: Option<&str>| {
        iam_fixture(&[
            "policy",
            &server.url,
            &key("admin", 0),
            &key("admin", 1),
            keys["policy"].as_str().unwrap(),
            &policy(without),
        ])
    };
    let params = json!({
        "db": {"password": {"ssm": "/shop/db-password"}},
        "api": {"secretsmanager": "shop/api"},
        "v": {"ssm": "/shop/db-password:1"},
        "bootstage": {
            "import": [{"ssm_path": "/shop/imported"}],
            // The whole bucket: moto's signature check fails on a prefix with a '/' in it.
            "sync": [{"from": "s3://iam-bucket", "to": "/dev/null/replaced"}],
        },
    });
    let sandbox = Sandbox::new();
    let dest = sandbox.path("dest/config");
    let mut params = params;
    params["bootstage"]["sync"][0]["to"] = json!(dest);
    let file = sandbox.path("user-data.json");
    std::fs::write(&file, params.to_string()).unwrap();
    let stage = |args: &[&str]| {
        let mut cmd = sandbox.command(args);
        for (k, v) in moto().env() {
            cmd.env(k, v);
        }
        cmd.env("AWS_ENDPOINT_URL", &server.url)
            .env("AWS_ACCESS_KEY_ID", key("app", 0))
            .env("AWS_SECRET_ACCESS_KEY", key("app", 1));
        common::run(cmd)
    };
    let metadata_args = [
        "metadata",
        "--user-data-file",
        file.to_str().unwrap(),
        "--fact",
        "instance-id=i-0iam",
        "--timeout",
        "20s",
    ];
    let sync_args = ["s3-sync", "--sync-timeout", "20s"];

    let out = stage(&metadata_args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = read_json(&sandbox.state().join("params.json"));
    assert_eq!(
        (
            &json["db"]["password"],
            &json["api"],
            &json["v"],
            &json["port"]
        ),
        (
            &json!("iam-secret-1"),
            &json!("iam-secret-2"),
            &json!("iam-secret-1"),
            &json!("5432")
        )
    );
    let out = stage(&sync_args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(dest.join("config/app.conf")).unwrap(),
        "port=1\n"
    );

    for (action, sync) in [
        ("ssm:GetParameters", false),
        ("ssm:GetParameter", false),
        ("ssm:GetParametersByPath", false),
        ("secretsmanager:GetSecretValue", false),
        ("s3:ListBucket", true),
    ] {
        set_policy(Some(action));
        let out = match sync {
            false => stage(&metadata_args).await,
            true => stage(&sync_args).await,
        };
        let said = match sync {
            false => format!("{action} was refused"),
            true => format!("s3://iam-bucket/: access refused: {action}"),
        };
        assert_exit(&out, 77, &said);
    }
    // s3:GetObject: a changed object must be fetched to find out.
    set_policy(Some("s3:GetObject"));
    std::fs::remove_file(dest.clone()).unwrap();
    let out = stage(&sync_args).await;
    assert_exit(&out, 77, "access refused: s3:GetObject");
    set_policy(None);
    let out = stage(&sync_args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // sqs:ReceiveMessage: a watcher of the instance's queue (which holds a deployment
    // message) reads it with the policy, and says it is refused without the action. (The
    // policy's sqs:DeleteMessage cannot be proven here: moto authorizes a batch delete as
    // sqs:DeleteMessageBatch, where AWS asks for sqs:DeleteMessage.)
    let queue = keys["queue"].as_str().unwrap();
    let watch = || {
        let args = [
            "s3-sync",
            "--watch",
            "10m",
            "--sqs",
            queue,
            "--sync-timeout",
            "20s",
        ];
        let mut cmd = sandbox.command_under(&["timeout", "-s", "TERM", "6"], &args);
        for (k, v) in moto().env() {
            cmd.env(k, v);
        }
        cmd.env("AWS_ENDPOINT_URL", &server.url)
            .env("AWS_ACCESS_KEY_ID", key("app", 0))
            .env("AWS_SECRET_ACCESS_KEY", key("app", 1))
            .env("BOOTSTAGE_LOG", "info");
        common::run(cmd)
    };
    let refused = format!("{queue}: access refused: sqs:ReceiveMessage");
    let out = watch().await;
    assert!(
        out.stderr.contains("watch: woken by the queue"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&refused), "{}", out.stderr);
    set_policy(Some("sqs:ReceiveMessage"));
    let out = watch().await;
    assert!(
        out.stderr.contains(&refused),
        "{refused:?} in:\n{}",
        out.stderr
    );
}

/// Whoever may write under an import's path is not who may edit the launch template: a
/// parameter named `/…/bootstage/notify/command` set the command `notify ready` runs as
/// root, and `PERL5OPT` in params.env ran code in a root perl hook. An import now never
/// sets bootstage's own settings (any case or separator) nor a variable that steers an
/// interpreter, the loader or a tool; each is left out with a warning naming it. And no
/// imported value reaches a root hook: hooks get `hooks.env`, without them, and their
/// own HOME (an imported HOME made a root python load an app-owned `.pth`).
#[tokio::test]
async fn an_import_never_configures_bootstage_nor_steers_a_root_hook() {
    use aws_sdk_ssm::types::ParameterType::{SecureString, String as Plain};
    let sandbox = Sandbox::new();
    let pwned = sandbox.path("pwned");
    let payload = format!("-Mstrict;system(\"touch {}\")", pwned.display());
    let hostile = [
        "/t22/app/bootstage/notify/command",
        "/t22/app/Bootstage/lifecycle/hold",
        "/t22/app/BOOTSTAGE_SYNC",
        "/t22/app/bootstage.watch/sqs",
        "/t22/app/bootstage-x",
        "/t22/app/PERL5OPT",
        "/t22/app/LD_PRELOAD",
        "/t22/app/node/options",
        "/t22/app/PYTHONPATH",
        "/t22/app/GIT_SSH_COMMAND",
        "/t22/app/AWS_CONFIG_FILE",
        "/t22/app/https_proxy",
        "/t22/app/ssl/cert/file",
        "/t22/app/PATH",
        "/t22/app/home",
        "/t22/app/tar/options",
        "/t22/app/xdg/config/home",
    ];
    for name in hostile {
        put_param(name, &payload, Plain).await;
    }
    put_param("/t22/app/BASH_ENV", &payload, SecureString).await;
    put_param("/t22/app/db/host", "db.internal", Plain).await;
    let hook = sandbox.path("hooks/per-boot.d/10-perl");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        "#!/usr/bin/perl\nprint STDERR \"perl hook ran with DB_HOST=\", $ENV{DB_HOST} // \"unset\", \" HOME=$ENV{HOME}\\n\";\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let params = json!({
        "bootstage": {"import": [{"ssm_path": "/t22/app/", "recursive": true}]},
    });
    let out = metadata(&sandbox, &moto().url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json = read_json(&sandbox.state().join("params.json"));
    assert_eq!(
        json,
        json!({"bootstage": params["bootstage"], "db": {"host": "db.internal"}})
    );
    let env = shell_readback("dash", &sandbox.state().join("params.env"));
    let names: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("BOOTSTAGE_"))
        .collect();
    assert_eq!(names, ["DB_HOST"]);
    assert!(!sandbox.state().join("credentials").exists());
    let settings = "not imported: it would set bootstage's own settings, which only user-data and the image configure";
    for name in &hostile[..5] {
        let line = format!("{settings} parameter=\"{name}\"");
        assert!(out.stderr.contains(&line), "{line:?} in:\n{}", out.stderr);
    }
    for (name, var) in [
        ("PERL5OPT", "PERL5OPT"),
        ("LD_PRELOAD", "LD_PRELOAD"),
        ("node/options", "NODE_OPTIONS"),
        ("PYTHONPATH", "PYTHONPATH"),
        ("GIT_SSH_COMMAND", "GIT_SSH_COMMAND"),
        ("AWS_CONFIG_FILE", "AWS_CONFIG_FILE"),
        ("https_proxy", "HTTPS_PROXY"),
        ("ssl/cert/file", "SSL_CERT_FILE"),
        ("PATH", "PATH"),
        ("BASH_ENV", "BASH_ENV"),
        ("home", "HOME"),
        ("tar/options", "TAR_OPTIONS"),
        ("xdg/config/home", "XDG_CONFIG_HOME"),
    ] {
        let line = format!("not imported: its variable {var} is reserved for");
        let param = format!("parameter=\"/t22/app/{name}\"");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&line) && l.contains(&param)),
            "{line:?} {param:?} in:\n{}",
            out.stderr
        );
    }
    assert_nowhere(&sandbox, &out, &[&payload]);

    // What an import brought is the app's (params.env), never a root hook's (hooks.env).
    assert!(
        sandbox
            .read("params.env")
            .unwrap()
            .contains("DB_HOST=\"db.internal\"")
    );
    assert!(!sandbox.read("hooks.env").unwrap().contains("DB_HOST"));
    // The root hook's interpreter never sees the payload, nor an imported value.
    let out = sandbox.run(&["hooks"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("perl hook ran with DB_HOST=unset HOME=/root"),
        "{}",
        out.stderr
    );
    assert!(
        !pwned.exists(),
        "the imported PERL5OPT ran in the root hook"
    );
}

/// An imported SecureString `/…/tls.key` overwrote the credential file of the operator's
/// `tls.key` reference (`env: false`), and its value landed in params.env. Two sources of
/// one credential file, or an import exporting the variable an `env: false` reference
/// keeps out, are refused (65) naming both, and nothing is written.
#[tokio::test]
async fn two_sources_of_one_credential_are_refused_naming_both() {
    use aws_sdk_ssm::types::ParameterType::SecureString;
    put_param("/t22c/tls.key", "imported-key", SecureString).await;
    put_param("/t22c/only/api.token", "imported-token", SecureString).await;
    put_param("/t22c/operator-key", "operator-secret", SecureString).await;
    let sandbox = Sandbox::new();
    sandbox.seed("params.json", "old json\n");
    sandbox.seed("params.env", "OLD=\"env\"\n");
    let cases = [
        (
            json!({
                "tls": {"key": {"ssm": "/t22c/operator-key", "env": false}},
                "bootstage": {"import": [{"ssm_path": "/t22c/"}]},
            }),
            "parameter \"tls.key\" (SSM parameter \"/t22c/operator-key\") and SSM parameter \"/t22c/tls.key\" (imported) both name the credential file \"tls.key\"",
        ),
        (
            json!({
                "tls.key": {"ssm": "/t22c/operator-key"},
                "tls": {"key": {"ssm": "/t22c/operator-key"}},
            }),
            "parameter \"tls.key\" (SSM parameter \"/t22c/operator-key\") and parameter \"tls.key\" (SSM parameter \"/t22c/operator-key\") both name the credential file \"tls.key\"",
        ),
        (
            json!({
                "api": {"token": {"ssm": "/t22c/operator-key"}},
                "bootstage": {"import": [{"ssm_path": "/t22c/only/"}]},
            }),
            "parameter \"api.token\" (SSM parameter \"/t22c/operator-key\") and SSM parameter \"/t22c/only/api.token\" (imported) both name the credential file \"api.token\"",
        ),
    ];
    for (params, message) in cases {
        let out = metadata(&sandbox, &moto().url, &params, "20s").await;
        assert_exit(&out, 65, message);
        assert_eq!(sandbox.read("params.json").unwrap(), "old json\n");
        assert_eq!(sandbox.read("params.env").unwrap(), "OLD=\"env\"\n");
        assert!(!sandbox.state().join("credentials").exists());
        assert_nowhere(
            &sandbox,
            &out,
            &["imported-key", "operator-secret", "imported-token"],
        );
    }
}

/// Whoever writes under an import path could stop every boot: `/…/DB/HOST` beside
/// user-data's `db.host` merged (the JSON paths differ) and then collided as `DB_HOST`
/// (65). User-data now wins by the variable's name, and of two imports the first does.
#[tokio::test]
async fn an_import_spelled_differently_never_fails_the_boot() {
    use aws_sdk_ssm::types::ParameterType::String as Plain;
    put_param("/t22d/a/DB/HOST", "attacker", Plain).await;
    put_param("/t22d/a/app/Color", "blue", Plain).await;
    put_param("/t22d/b/APP/COLOR", "red", Plain).await;
    let sandbox = Sandbox::new();
    let params = json!({
        "db.host": "db.internal",
        "bootstage": {"import": [
            {"ssm_path": "/t22d/a/", "recursive": true},
            {"ssm_path": "/t22d/b/", "recursive": true},
        ]},
    });
    let out = metadata(&sandbox, &moto().url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = shell_readback("dash", &sandbox.state().join("params.env"));
    assert_eq!(
        (
            env.get("DB_HOST").map(String::as_str),
            env.get("APP_COLOR").map(String::as_str)
        ),
        (Some("db.internal"), Some("blue"))
    );
    for key in ["DB.HOST", "APP.COLOR"] {
        let line = format!("the imported value is not used key=\"{key}\"");
        assert!(out.stderr.contains(&line), "{line} in:\n{}", out.stderr);
    }
}

/// Whoever writes under an import path could still fail every boot (65) with a parameter
/// that cannot be exported: a plain one spelled like an `"env": false` reference's
/// variable, a name over 255 bytes, a NUL in a value, a SecureString under a key that
/// cannot name a credential file. Each is now left out with a warning naming it, and the
/// boot goes on; what user-data asked for stays as it asked.
#[tokio::test]
async fn an_import_that_cannot_be_exported_is_left_out_not_fatal() {
    use aws_sdk_ssm::types::ParameterType::{SecureString, String as Plain};
    put_param("/t22e/ref", "the-operators-secret", SecureString).await;
    put_param("/t22e/a/DB/PASSWORD", "imported-plain", Plain).await;
    let long = format!("/t22e/a/{}/{}", "a".repeat(120), "b".repeat(140));
    put_param(&long, "x", Plain).await;
    put_param("/t22e/a/nul", "a\u{0}b", Plain).await;
    put_param("/t22e/a/.env", "hidden", SecureString).await;
    put_param("/t22e/a/app/color", "blue", Plain).await;
    let sandbox = Sandbox::new();
    let params = json!({
        "db": {"password": {"ssm": "/t22e/ref", "env": false}},
        "bootstage": {"import": [{"ssm_path": "/t22e/a/", "recursive": true}]},
    });
    let out = metadata(&sandbox, &moto().url, &params, "20s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = shell_readback("dash", &sandbox.state().join("params.env"));
    let names: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("BOOTSTAGE_"))
        .collect();
    assert_eq!(names, ["APP_COLOR"]);
    let creds: Vec<String> = std::fs::read_dir(sandbox.state().join("credentials"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(creds, ["db.password"]);
    for (parameter, why) in [
        (
            "/t22e/a/DB/PASSWORD",
            "its variable DB_PASSWORD is one an \"env\": false reference keeps out of params.env",
        ),
        (
            long.as_str(),
            "its variable name would be 261 bytes, over 255",
        ),
        ("/t22e/a/nul", "its value holds a NUL character"),
        ("/t22e/a/.env", "its name cannot name a credential file"),
    ] {
        let line = format!("not imported: {why} parameter=\"{parameter}\"");
        assert!(
            out.stderr.lines().any(|l| l.contains(&line)),
            "{line:?} in:\n{}",
            out.stderr
        );
    }
    assert_nowhere(
        &sandbox,
        &out,
        &["the-operators-secret", "imported-plain", "hidden"],
    );
}

/// Imports that fill params.env to within a few bytes of its 1 MiB cap left no room for
/// the facts, which the metadata stage adds after them: the boot failed (65) on a file
/// only an import writer had filled. The room imports may take now counts the facts, and
/// the import that would pass it is left out with a warning.
#[tokio::test]
async fn imports_leave_room_for_the_facts() {
    use aws_sdk_ssm::types::ParameterType::String as Plain;
    // 261 values of 4,000 bytes and one of 2,475: each line is NAME="value"\n, 8 bytes
    // beside the value with a four-letter name, so params.env would hold 1,048,571 bytes
    // of imports, 5 under the cap, before the facts' 35.
    for i in 0..262 {
        let len = if i == 261 { 2_475 } else { 4_000 };
        put_param(&format!("/t22f/k{i:03}"), &"v".repeat(len), Plain).await;
    }
    let sandbox = Sandbox::new();
    let params = json!({"bootstage": {"import": [{"ssm_path": "/t22f/"}]}});
    let out = metadata(&sandbox, &moto().url, &params, "60s").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = shell_readback("dash", &sandbox.state().join("params.env"));
    assert_eq!(env["BOOTSTAGE_INSTANCE_ID"], "i-0secrets");
    let imported = env.keys().filter(|k| k.starts_with('K')).count();
    assert_eq!(imported, 261);
    assert!(
        out.stderr
            .contains("not imported: params.env would pass 1048576 bytes parameter=\"/t22f/k261\""),
        "{}",
        out.stderr
    );
}
