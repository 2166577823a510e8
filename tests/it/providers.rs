//! The metadata stage on each provider (`--provider`, `BOOTSTAGE_PROVIDER`, the DMI):
//! EC2's IMDS and Compute Engine's metadata server, both served by the IMDS emulator
//! (`Flavor::Gcp` for GCP) on 127.0.0.1. GCP's real host is never contacted: every GCP
//! run names the emulator (`--imds-endpoint` or `GCE_METADATA_HOST`), and the sandbox
//! points `GCE_METADATA_HOST` at a closed loopback port otherwise.

use crate::common;

use std::time::Duration;

use common::{Sandbox, b64};
use imds_emulator::{Config, Emulator, Flavor, GcpInstance};

const PARAMS: &str = r#"{"app":{"name":"web","port":8080,"tags":["a","b"]},"db":{"url":"postgres://db:5432/x?sslmode=require"},"quote":"say \"hi\" $HOME `x` \\ done","bootstage":{"sync":[]}}"#;

fn aws(user_data: &[u8]) -> Config {
    Config {
        user_data: Some(user_data.to_vec()),
        ..Config::default()
    }
}

fn gcp(config: Config) -> Config {
    Config {
        flavor: Flavor::Gcp,
        ..config
    }
}

/// The lines of an env file that are not facts (`BOOTSTAGE_…`).
fn parameters_only(env: &str) -> String {
    env.lines()
        .filter(|l| !l.starts_with("BOOTSTAGE_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn facts_only(env: &str) -> Vec<&str> {
    env.lines()
        .filter(|l| l.starts_with("BOOTSTAGE_"))
        .collect()
}

async fn gcp_metadata(sb: &Sandbox, emu: &Emulator, extra: &[&str]) -> common::Outcome {
    let mut args = vec!["--provider", "gcp"];
    args.extend_from_slice(extra);
    sb.metadata(&emu.url(), &args).await
}

/// The same user-data, served by EC2's IMDS and as either GCP attribute, gives the same
/// `params.json`, and the same `params.env` and `hooks.env` but for the facts, byte for
/// byte. With both attributes set, `bootstage` is the one read (the `user-data` one here
/// is cloud-config, which bootstage would refuse).
#[tokio::test(flavor = "multi_thread")]
async fn the_same_user_data_gives_the_same_parameters_on_aws_and_gcp() {
    for user_data in [PARAMS.to_string(), b64(PARAMS)] {
        let aws_emu = Emulator::start(aws(user_data.as_bytes())).await.unwrap();
        let aws_sb = Sandbox::new();
        let out = aws_sb.metadata(&aws_emu.url(), &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let instance: serde_json::Value =
            serde_json::from_str(&aws_sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], "imds");
        assert!(
            instance.get("project_id").is_none(),
            "EC2's instance.json is as it was: {instance}"
        );

        let as_bootstage = GcpInstance {
            attributes: [("user-data".into(), "#cloud-config\nruncmd: [ls]\n".into())].into(),
            ..GcpInstance::default()
        };
        let as_user_data = GcpInstance {
            user_data_attribute: "user-data".into(),
            ..GcpInstance::default()
        };
        for instance in [as_bootstage, as_user_data] {
            let attribute = instance.user_data_attribute.clone();
            let emu = Emulator::start(gcp(Config {
                gcp: instance,
                ..aws(user_data.as_bytes())
            }))
            .await
            .unwrap();
            let sb = Sandbox::new();
            let out = gcp_metadata(&sb, &emu, &[]).await;
            assert_eq!(out.code, 0, "{attribute}: {}", out.stderr);
            assert_eq!(
                sb.read("params.json").unwrap(),
                aws_sb.read("params.json").unwrap(),
                "{attribute}"
            );
            for file in ["params.env", "hooks.env"] {
                let (gcp_env, aws_env) = (sb.read(file).unwrap(), aws_sb.read(file).unwrap());
                assert_eq!(parameters_only(&gcp_env), parameters_only(&aws_env));
                assert!(parameters_only(&gcp_env).contains("QUOTE="), "{gcp_env}");
            }
        }
    }
}

/// GCP's facts under the names EC2's use where they mean the same thing, plus the
/// project; every request carried `Metadata-Flavor: Google` and was one of GCP's paths.
#[tokio::test(flavor = "multi_thread")]
async fn gcp_facts_map_to_the_same_names() {
    let emu = Emulator::start(gcp(aws(PARAMS.as_bytes()))).await.unwrap();
    let sb = Sandbox::new();
    let out = gcp_metadata(&sb, &emu, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = sb.read("params.env").unwrap();
    assert_eq!(
        facts_only(&env),
        [
            "BOOTSTAGE_AVAILABILITY_ZONE=\"europe-west4-b\"",
            "BOOTSTAGE_INSTANCE_ID=\"4520031799277581759\"",
            "BOOTSTAGE_INSTANCE_TYPE=\"e2-medium\"",
            "BOOTSTAGE_LOCAL_HOSTNAME=\"web-1.europe-west4-b.c.bootstage-test.internal\"",
            "BOOTSTAGE_LOCAL_IPV4=\"10.164.0.2\"",
            "BOOTSTAGE_MAC=\"42:01:0a:a4:00:02\"",
            "BOOTSTAGE_PROJECT_ID=\"bootstage-test\"",
            "BOOTSTAGE_REGION=\"europe-west4\"",
        ]
    );
    let instance: serde_json::Value =
        serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(
        instance,
        serde_json::json!({
            "source": "gcp",
            "instance_id": "4520031799277581759",
            "region": "europe-west4",
            "availability_zone": "europe-west4-b",
            "instance_type": "e2-medium",
            "ami_id": null,
            "account_id": null,
            "local_ipv4": "10.164.0.2",
            "local_hostname": "web-1.europe-west4-b.c.bootstage-test.internal",
            "mac": "42:01:0a:a4:00:02",
            "target_lifecycle_state": null,
            "pending_time": null,
            "project_id": "bootstage-test",
            "tags": null,
        })
    );
    let requests = emu.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(r.had_flavor && r.method == "GET", "{r:?}");
        assert!(r.path.starts_with("/computeMetadata/v1/"), "{r:?}");
        assert_eq!(r.status, Some(200), "{r:?}");
    }
}

/// A server that answers without `Metadata-Flavor: Google` is not Google's: refused at
/// once (no retry to the deadline), exit 69, the previous boot's files untouched.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_without_the_flavor_header_is_refused() {
    let emu = Emulator::start(gcp(Config {
        omit_flavor_header: true,
        ..aws(PARAMS.as_bytes())
    }))
    .await
    .unwrap();
    let sb = Sandbox::new();
    sb.seed("params.json", "old json");
    sb.seed("params.env", "OLD=\"1\"\n");
    sb.seed("instance.json", "old facts");
    let out = gcp_metadata(&sb, &emu, &[]).await;
    common::assert_exit(&out, 69, "lacks Metadata-Flavor: Google");
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}: retried?",
        out.elapsed
    );
    assert_eq!(sb.read("params.json").as_deref(), Some("old json"));
    assert_eq!(sb.read("params.env").as_deref(), Some("OLD=\"1\"\n"));
    assert_eq!(sb.read("instance.json").as_deref(), Some("old facts"));
}

/// No user-data in either attribute: final after the grace period, as on EC2.
#[tokio::test(flavor = "multi_thread")]
async fn no_gcp_user_data_is_final_after_the_grace_period() {
    let emu = Emulator::start(gcp(Config::default())).await.unwrap();
    let sb = Sandbox::new();
    let out = gcp_metadata(&sb, &emu, &["--user-data-wait", "1s"]).await;
    common::assert_exit(&out, 66, "this instance has no user-data");
    assert!(out.elapsed >= Duration::from_secs(1), "{:?}", out.elapsed);
    for name in ["bootstage", "user-data"] {
        let path = format!("/computeMetadata/v1/instance/attributes/{name}");
        assert!(
            emu.requests().iter().filter(|r| r.path == path).count() >= 2,
            "{name} polled"
        );
    }
}

/// The provider from the DMI when no flag or variable names one; the flag and the
/// variable win over it. Both emulators run; only the chosen one is ever asked.
#[tokio::test(flavor = "multi_thread")]
async fn the_provider_follows_the_dmi_unless_named() {
    let aws_emu = Emulator::start(aws(PARAMS.as_bytes())).await.unwrap();
    let gcp_emu = Emulator::start(gcp(aws(PARAMS.as_bytes()))).await.unwrap();
    let gce_host = gcp_emu.url().trim_start_matches("http://").to_string();
    /// sys_vendor, board_asset_tag, flags, BOOTSTAGE_PROVIDER → instance.json's source.
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], Option<&'a str>, &'a str);
    let cases: [Case; 5] = [
        ("Google", "", &[], None, "gcp"),
        ("Amazon EC2", "i-0123456789abcdef0", &[], None, "imds"),
        ("Google", "", &["--provider", "aws"], None, "imds"),
        ("Google", "", &[], Some("aws"), "imds"),
        ("QEMU", "", &[], Some("gcp"), "gcp"),
    ];
    for (vendor, tag, flags, env, source) in cases {
        let (aws_before, gcp_before) = (aws_emu.requests().len(), gcp_emu.requests().len());
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("dmi")).unwrap();
        std::fs::write(sb.path("dmi/sys_vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(sb.path("dmi/board_asset_tag"), format!("{tag}\n")).unwrap();
        let mut args = vec!["metadata", "--timeout", "10s"];
        args.extend_from_slice(flags);
        let mut cmd = sb.command(&args);
        cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws_emu.url())
            .env("GCE_METADATA_HOST", &gce_host);
        if let Some(env) = env {
            cmd.env("BOOTSTAGE_PROVIDER", env);
        }
        let out = common::run(cmd).await;
        let case = format!("{vendor:?} {tag:?} {flags:?} {env:?}");
        assert_eq!(out.code, 0, "{case}: {}", out.stderr);
        let instance: serde_json::Value =
            serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], source, "{case}");
        let (aws_asked, gcp_asked) = (
            aws_emu.requests().len() - aws_before,
            gcp_emu.requests().len() - gcp_before,
        );
        match source {
            "gcp" => assert!(aws_asked == 0 && gcp_asked > 0, "{case}"),
            _ => assert!(gcp_asked == 0 && aws_asked > 0, "{case}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_provider_is_refused() {
    let sb = Sandbox::new();
    let out = sb.run(&["metadata", "--provider", "azure"]).await;
    common::assert_exit(
        &out,
        64,
        "--provider \"azure\": unknown provider; known: aws, gcp",
    );
    let mut cmd = sb.command(&["metadata"]);
    cmd.env("BOOTSTAGE_PROVIDER", "openstack");
    let out = common::run(cmd).await;
    common::assert_exit(
        &out,
        64,
        "BOOTSTAGE_PROVIDER=\"openstack\": unknown provider",
    );
}

/// The emulator's GCP flavor is as strict as GCE: 403 without `Metadata-Flavor: Google`
/// or with `X-Forwarded-For`, and every answer carries the header.
#[tokio::test(flavor = "multi_thread")]
async fn the_gcp_emulator_wants_the_flavor_header() {
    let emu = Emulator::start(gcp(Config::default())).await.unwrap();
    let url = format!("{}/computeMetadata/v1/instance/id", emu.url());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let without = http.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 403);
    let forwarded = http
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 403);
    let with = http
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(with.headers()["metadata-flavor"], "Google");
    assert_eq!(with.text().await.unwrap(), "4520031799277581759");
    let ec2 = http
        .get(format!("{}/latest/meta-data/instance-id", emu.url()))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    assert_eq!(ec2.status(), 404);
}
