//! The metadata stage on each provider (`--provider`, `BOOTSTAGE_PROVIDER`, the DMI):
//! EC2's IMDS, Compute Engine's metadata server, Azure's IMDS and OpenStack's metadata
//! service, all served by the IMDS emulator (`Flavor::Gcp`, `Azure`, `OpenStack`) on
//! 127.0.0.1, and OpenStack's config drive as a directory. No real address is ever
//! contacted: every run names the emulator (`--imds-endpoint` or the provider's
//! variable), and the sandbox points `GCE_METADATA_HOST`, `BOOTSTAGE_AZURE_IMDS` and
//! `BOOTSTAGE_OPENSTACK_METADATA` at a closed loopback port otherwise.

use crate::common;

use std::time::Duration;

use common::{Sandbox, b64};
use imds_emulator::{AzureInstance, Config, Emulator, Flavor, GcpInstance, OpenStackInstance};

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

fn flavor(flavor: Flavor, config: Config) -> Config {
    Config { flavor, ..config }
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
/// variable win over it. All four emulators run; only the chosen one is ever asked.
#[tokio::test(flavor = "multi_thread")]
async fn the_provider_follows_the_dmi_unless_named() {
    let emulators = [
        (
            "imds",
            Emulator::start(aws(PARAMS.as_bytes())).await.unwrap(),
        ),
        (
            "gcp",
            Emulator::start(gcp(aws(PARAMS.as_bytes()))).await.unwrap(),
        ),
        (
            "azure",
            Emulator::start(flavor(Flavor::Azure, aws(PARAMS.as_bytes())))
                .await
                .unwrap(),
        ),
        (
            "openstack",
            Emulator::start(flavor(Flavor::OpenStack, aws(PARAMS.as_bytes())))
                .await
                .unwrap(),
        ),
    ];
    let gce_host = emulators[1]
        .1
        .url()
        .trim_start_matches("http://")
        .to_string();
    const AZURE_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
    /// sys_vendor, product_name, board_asset_tag, chassis_asset_tag, flags,
    /// BOOTSTAGE_PROVIDER → instance.json's source.
    type Case<'a> = ([&'a str; 4], &'a [&'a str], Option<&'a str>, &'a str);
    let cases: [Case; 12] = [
        (
            ["Google", "Google Compute Engine", "", ""],
            &[],
            None,
            "gcp",
        ),
        (
            ["Amazon EC2", "m5.large", "i-0123456789abcdef0", ""],
            &[],
            None,
            "imds",
        ),
        (
            [
                "Microsoft Corporation",
                "Virtual Machine",
                "None",
                AZURE_TAG,
            ],
            &[],
            None,
            "azure",
        ),
        // Hyper-V off Azure: the default.
        (
            ["Microsoft Corporation", "Virtual Machine", "None", "None"],
            &[],
            None,
            "imds",
        ),
        (
            ["OpenStack Foundation", "OpenStack Nova", "", ""],
            &[],
            None,
            "openstack",
        ),
        (
            ["QEMU", "Standard PC", "", "OpenStack Compute"],
            &[],
            None,
            "openstack",
        ),
        (["Google", "", "", ""], &["--provider", "aws"], None, "imds"),
        (["Google", "", "", ""], &[], Some("aws"), "imds"),
        (["QEMU", "", "", ""], &[], Some("gcp"), "gcp"),
        (
            ["QEMU", "", "", ""],
            &["--provider", "azure"],
            None,
            "azure",
        ),
        (
            ["Microsoft Corporation", "", "", AZURE_TAG],
            &[],
            Some("openstack"),
            "openstack",
        ),
        (
            ["OpenStack Foundation", "OpenStack Nova", "", ""],
            &["--provider", "gcp"],
            Some("azure"),
            "gcp",
        ),
    ];
    for (dmi, flags, env, source) in cases {
        let before: Vec<usize> = emulators.iter().map(|e| e.1.requests().len()).collect();
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.path("dmi")).unwrap();
        let names = [
            "sys_vendor",
            "product_name",
            "board_asset_tag",
            "chassis_asset_tag",
        ];
        for (name, value) in names.iter().zip(dmi) {
            std::fs::write(sb.path(&format!("dmi/{name}")), format!("{value}\n")).unwrap();
        }
        let mut args = vec!["metadata", "--timeout", "10s"];
        args.extend_from_slice(flags);
        let mut cmd = sb.command(&args);
        cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", emulators[0].1.url())
            .env("GCE_METADATA_HOST", &gce_host)
            .env("BOOTSTAGE_AZURE_IMDS", emulators[2].1.url())
            .env("BOOTSTAGE_OPENSTACK_METADATA", emulators[3].1.url());
        if let Some(env) = env {
            cmd.env("BOOTSTAGE_PROVIDER", env);
        }
        let out = common::run(cmd).await;
        let case = format!("{dmi:?} {flags:?} {env:?}");
        assert_eq!(out.code, 0, "{case}: {}", out.stderr);
        let instance: serde_json::Value =
            serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], source, "{case}");
        for ((name, emu), before) in emulators.iter().zip(before) {
            let asked = emu.requests().len() - before;
            match *name == source {
                true => assert!(asked > 0, "{case}: {name} not asked"),
                false => assert_eq!(asked, 0, "{case}: {name} asked"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_provider_is_refused() {
    let sb = Sandbox::new();
    let out = sb.run(&["metadata", "--provider", "oracle"]).await;
    common::assert_exit(
        &out,
        64,
        "--provider \"oracle\": unknown provider; known: aws, gcp, azure, openstack",
    );
    let mut cmd = sb.command(&["metadata"]);
    cmd.env("BOOTSTAGE_PROVIDER", "hetzner");
    let out = common::run(cmd).await;
    common::assert_exit(&out, 64, "BOOTSTAGE_PROVIDER=\"hetzner\": unknown provider");
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

/// How a run reaches a provider: its name, the emulator's flavor (`None`: OpenStack's
/// config drive, a directory and no emulator).
const PROVIDERS: [(&str, Option<Flavor>); 5] = [
    ("aws", Some(Flavor::Aws)),
    ("gcp", Some(Flavor::Gcp)),
    ("azure", Some(Flavor::Azure)),
    ("openstack", Some(Flavor::OpenStack)),
    ("openstack", None),
];

/// `bootstage metadata --provider NAME` against `config` served as `flavor`, or from a
/// config drive written from it; the sandbox and the emulator (if any) after the run.
async fn run_on(
    name: &str,
    flavor: Option<Flavor>,
    config: Config,
    extra: &[&str],
) -> (Sandbox, Option<Emulator>, common::Outcome) {
    let sb = Sandbox::new();
    let mut args = vec!["--provider", name];
    args.extend_from_slice(extra);
    match flavor {
        Some(flavor) => {
            let emu = Emulator::start(Config { flavor, ..config }).await.unwrap();
            let out = sb.metadata(&emu.url(), &args).await;
            (sb, Some(emu), out)
        }
        None => {
            let drive = sb.path("config-2");
            config
                .openstack
                .write_config_drive(&drive, config.user_data.as_deref())
                .unwrap();
            let mut all = vec!["metadata", "--timeout", "10s"];
            all.extend_from_slice(&args);
            let mut cmd = sb.command(&all);
            cmd.env("BOOTSTAGE_CONFIG_DRIVE", &drive);
            let out = common::run(cmd).await;
            (sb, None, out)
        }
    }
}

/// The same user-data (JSON, and the same as base64) gives byte-identical `params.json`
/// on every provider, and the same `params.env` and `hooks.env` but for the facts, whose
/// names are the same where they mean the same thing.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_user_data_gives_the_same_parameters_on_every_provider() {
    for user_data in [PARAMS.to_string(), b64(PARAMS)] {
        let mut first: Option<(String, String, String)> = None;
        for (name, flavor) in PROVIDERS {
            let how = format!("{name} {flavor:?}");
            let (sb, _emu, out) = run_on(name, flavor, aws(user_data.as_bytes()), &[]).await;
            assert_eq!(out.code, 0, "{how}: {}", out.stderr);
            let got = (
                sb.read("params.json").unwrap(),
                parameters_only(&sb.read("params.env").unwrap()),
                parameters_only(&sb.read("hooks.env").unwrap()),
            );
            assert!(got.1.contains("QUOTE="), "{how}: {}", got.1);
            match &first {
                None => first = Some(got),
                Some(aws) => assert_eq!(&got, aws, "{how}"),
            }
            // Every provider names the instance, its zone and its host the same way.
            let env = sb.read("params.env").unwrap();
            for fact in [
                "BOOTSTAGE_INSTANCE_ID=",
                "BOOTSTAGE_AVAILABILITY_ZONE=",
                "BOOTSTAGE_LOCAL_HOSTNAME=",
            ] {
                assert!(
                    env.lines().any(|l| l.starts_with(fact)),
                    "{how}: {fact} in {env}"
                );
            }
        }
    }
}

/// Azure's facts under the names EC2's use where they mean the same thing (the
/// subscription as the account, the computer name as the host's, the MAC as EC2 writes
/// it, tagsList as tags), plus the VM's name and resource group; every request carried
/// `Metadata: true` and a documented api-version.
#[tokio::test(flavor = "multi_thread")]
async fn azure_facts_map_to_the_same_names() {
    let config = Config {
        azure: AzureInstance {
            tags: [
                ("role".into(), "web".into()),
                ("Env Name".into(), "prod".into()),
            ]
            .into(),
            computer_name: "web1host".into(),
            ..AzureInstance::default()
        },
        ..aws(PARAMS.as_bytes())
    };
    let (sb, emu, out) = run_on("azure", Some(Flavor::Azure), config, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let env = sb.read("params.env").unwrap();
    assert_eq!(
        facts_only(&env),
        [
            "BOOTSTAGE_ACCOUNT_ID=\"8d10da13-8125-4ba9-a717-bf7490507b3d\"",
            "BOOTSTAGE_AVAILABILITY_ZONE=\"2\"",
            "BOOTSTAGE_INSTANCE_ID=\"02aab8a4-74ef-476e-8182-f6d2ba4166a6\"",
            "BOOTSTAGE_INSTANCE_NAME=\"web-1\"",
            "BOOTSTAGE_INSTANCE_TYPE=\"Standard_B2s\"",
            "BOOTSTAGE_LOCAL_HOSTNAME=\"web1host\"",
            "BOOTSTAGE_LOCAL_IPV4=\"10.1.0.4\"",
            "BOOTSTAGE_MAC=\"00:0d:3a:2b:4c:5e\"",
            "BOOTSTAGE_REGION=\"westeurope\"",
            "BOOTSTAGE_RESOURCE_GROUP=\"bootstage-rg\"",
            "BOOTSTAGE_TAG_ENV_NAME=\"prod\"",
            "BOOTSTAGE_TAG_ROLE=\"web\"",
        ]
    );
    let instance: serde_json::Value =
        serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(
        instance,
        serde_json::json!({
            "source": "azure",
            "instance_id": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
            "region": "westeurope",
            "availability_zone": "2",
            "instance_type": "Standard_B2s",
            "ami_id": null,
            "account_id": "8d10da13-8125-4ba9-a717-bf7490507b3d",
            "local_ipv4": "10.1.0.4",
            "local_hostname": "web1host",
            "mac": "00:0d:3a:2b:4c:5e",
            "instance_name": "web-1",
            "resource_group": "bootstage-rg",
            "target_lifecycle_state": null,
            "pending_time": null,
            "tags": {"Env Name": "prod", "role": "web"},
        })
    );
    let requests = emu.unwrap().requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(r.had_metadata && r.method == "GET", "{r:?}");
        assert!(r.path.starts_with("/metadata/instance"), "{r:?}");
        assert!(
            r.query
                .as_deref()
                .is_some_and(|q| q.starts_with("api-version=2021-02-01")),
            "{r:?}"
        );
        assert_eq!(r.status, Some(200), "{r:?}");
    }
}

/// OpenStack's facts, the same from the metadata service and from a config drive: the
/// uuid as the instance id, the project as GCP's, the name as Azure's, `meta` as tags.
#[tokio::test(flavor = "multi_thread")]
async fn openstack_facts_map_to_the_same_names() {
    let config = Config {
        openstack: OpenStackInstance {
            meta: [("role".into(), "web".into())].into(),
            ..OpenStackInstance::default()
        },
        ..aws(PARAMS.as_bytes())
    };
    for flavor in [Some(Flavor::OpenStack), None] {
        let (sb, emu, out) = run_on("openstack", flavor, config.clone(), &[]).await;
        assert_eq!(out.code, 0, "{flavor:?}: {}", out.stderr);
        let env = sb.read("params.env").unwrap();
        assert_eq!(
            facts_only(&env),
            [
                "BOOTSTAGE_AVAILABILITY_ZONE=\"nova\"",
                "BOOTSTAGE_INSTANCE_ID=\"d8e02d56-2648-49a3-bf97-6be8f1204f38\"",
                "BOOTSTAGE_INSTANCE_NAME=\"web-1\"",
                "BOOTSTAGE_LOCAL_HOSTNAME=\"web-1.novalocal\"",
                "BOOTSTAGE_PROJECT_ID=\"f7ac731cc11f40efbc03a9f9e1d1d21f\"",
                "BOOTSTAGE_TAG_ROLE=\"web\"",
            ],
            "{flavor:?}"
        );
        let instance: serde_json::Value =
            serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
        assert_eq!(instance["source"], "openstack");
        assert_eq!(instance["project_id"], "f7ac731cc11f40efbc03a9f9e1d1d21f");
        if let Some(emu) = emu {
            for r in emu.requests() {
                assert!(r.path.starts_with("/openstack/latest/"), "{r:?}");
                assert_eq!(r.status, Some(200), "{r:?}");
            }
        }
    }
}

/// Azure's IMDS wants `Metadata: true` and no `X-Forwarded-For` (400 otherwise), an
/// api-version, and `format=text` for a leaf; the emulator is as strict.
#[tokio::test(flavor = "multi_thread")]
async fn the_azure_emulator_wants_the_metadata_header() {
    let emu = Emulator::start(flavor(Flavor::Azure, aws(b"{\"a\":1}")))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |q: &str| format!("{}/metadata/instance/compute/userData?{q}", emu.url());
    let text = "api-version=2021-02-01&format=text";
    let without = http.get(url(text)).send().await.unwrap();
    assert_eq!(without.status(), 400);
    assert_eq!(
        without.text().await.unwrap(),
        r#"{"error":"Bad request. Required metadata header not specified"}"#
    );
    let forwarded = http
        .get(url(text))
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 400);
    let no_version = http
        .get(url("format=text"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let leaf_as_json = http
        .get(url("api-version=2021-02-01"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(leaf_as_json.status(), 400);
    let with = http
        .get(url(text))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(with.text().await.unwrap(), b64("{\"a\":1}"));
    let doc = http
        .get(format!(
            "{}/metadata/instance?api-version=2021-02-01",
            emu.url()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    assert!(
        doc.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: serde_json::Value = serde_json::from_str(&doc.text().await.unwrap()).unwrap();
    assert_eq!(
        doc["compute"]["vmId"],
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    assert_eq!(doc["network"]["interface"][0]["macAddress"], "000D3A2B4C5E");
    let ec2 = http
        .get(format!("{}/latest/meta-data/instance-id", emu.url()))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(ec2.status(), 400, "no api-version");
}

/// A server that answers Azure's or OpenStack's paths with something that is not their
/// JSON (a captive portal's page) is refused at once, exit 69, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_is_not_the_providers_json_is_refused() {
    let html_azure = Config {
        azure: AzureInstance {
            answer_html: true,
            ..AzureInstance::default()
        },
        ..aws(PARAMS.as_bytes())
    };
    let html_openstack = Config {
        openstack: OpenStackInstance {
            answer_html: true,
            ..OpenStackInstance::default()
        },
        ..aws(PARAMS.as_bytes())
    };
    let cases = [
        ("azure", Flavor::Azure, html_azure, "refusing it"),
        (
            "openstack",
            Flavor::OpenStack,
            html_openstack,
            "not JSON, so",
        ),
    ];
    for (name, flavor, config, message) in cases {
        let emu = Emulator::start(Config { flavor, ..config }).await.unwrap();
        let sb = Sandbox::new();
        sb.seed("params.json", "old json");
        sb.seed("instance.json", "old facts");
        let out = sb.metadata(&emu.url(), &["--provider", name]).await;
        common::assert_exit(&out, 69, message);
        assert!(
            out.elapsed < Duration::from_secs(5),
            "{name}: took {:?}",
            out.elapsed
        );
        assert_eq!(sb.read("params.json").as_deref(), Some("old json"));
        assert_eq!(sb.read("instance.json").as_deref(), Some("old facts"));
    }
    // Azure's facts alone (the user-data is base64, but the document is a page).
    let out = azure_facts_from_html().await;
    common::assert_exit(&out, 69, "is \"text/html\", not JSON, so");
    common::assert_exit(&out, 69, "is not Azure's IMDS; refusing it");
}

/// An Azure server whose userData is fine but whose instance document is not JSON.
async fn azure_facts_from_html() -> common::Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (kind, body) = match request.contains("userData") {
                    true => ("text/plain", b64(PARAMS)),
                    false => ("text/html", "<html>portal</html>".to_string()),
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let sb = Sandbox::new();
    sb.metadata(&url, &["--provider", "azure"]).await
}

/// No user-data on Azure (userData empty) or OpenStack (404, or no file on the drive):
/// final after the grace period, exit 66, as on EC2.
#[tokio::test(flavor = "multi_thread")]
async fn no_user_data_is_final_on_azure_and_openstack() {
    for (name, flavor) in &PROVIDERS[2..] {
        let (_sb, emu, out) = run_on(
            name,
            *flavor,
            Config::default(),
            &["--user-data-wait", "1s"],
        )
        .await;
        common::assert_exit(&out, 66, "this instance has no user-data");
        if let Some(emu) = emu {
            assert!(
                out.elapsed >= Duration::from_secs(1),
                "{name}: {:?}",
                out.elapsed
            );
            let polled = emu
                .requests()
                .iter()
                .filter(|r| r.path.ends_with("userData") || r.path.ends_with("user_data"))
                .count();
            assert!(polled >= 2, "{name}: user-data polled {polled} times");
        }
    }
}

/// A wireserver that cannot be reached (a closed port) does not fail the boot: the
/// values are current, the metadata stage exits 0, the log says the report failed and
/// what Azure will show, and the ready notice's status (what `systemctl status` shows)
/// says it was not reported.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_wireserver_is_said_and_the_boot_goes_on() {
    let config = aws(PARAMS.as_bytes());
    let emu = Emulator::start(flavor(Flavor::Azure, config))
        .await
        .unwrap();
    let sb = Sandbox::new();
    let mut cmd = sb.command(&[
        "metadata",
        "--provider",
        "azure",
        "--imds-endpoint",
        &emu.url(),
        "--timeout",
        "3s",
    ]);
    let socket_path = sb.path("notify.sock");
    let notices = common::notifications_until(&socket_path, "BARRIER=1", Duration::from_secs(15));
    cmd.env("BOOTSTAGE_AZURE_WIRESERVER", "http://127.0.0.1:9")
        .env("BOOTSTAGE_AZURE_REPORT_READY", "true")
        .env("NOTIFY_SOCKET", &socket_path);
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(sb.read("params.json").is_some());
    let notices = notices.join().unwrap();
    let ready: Vec<_> = notices
        .iter()
        .filter(|m| m.starts_with("READY=1"))
        .collect();
    assert_eq!(
        ready,
        [
            "READY=1\nSTATUS=parameters ready: 15 variables; not reported ready to Azure's wireserver (the log says why)\n"
        ],
        "{notices:?}"
    );
    assert!(
        out.stderr
            .contains("could not report ready to Azure's wireserver: ")
            && out
                .stderr
                .contains("; Azure will not show this VM as provisioned"),
        "{}",
        out.stderr
    );
}

/// With `BOOTSTAGE_AZURE_REPORT_READY=true`, once the values are written, the goal state
/// is read from the wireserver and the role instance reported Ready with its incarnation,
/// container and instance, `x-ms-version: 2012-11-30` on both; without it, the
/// wireserver is never asked; a value that is not a boolean is bad usage before anything
/// is read or written.
#[tokio::test(flavor = "multi_thread")]
async fn azure_reports_ready_to_the_wireserver_when_asked() {
    let config = Config {
        azure: AzureInstance {
            incarnation: 7,
            ..AzureInstance::default()
        },
        ..aws(PARAMS.as_bytes())
    };
    let emu = Emulator::start(flavor(Flavor::Azure, config))
        .await
        .unwrap();
    let wireserver = |r: &&imds_emulator::Record| r.path.starts_with("/machine");
    for (asked, code) in [(Some("true"), 0), (None, 0), (Some("maybe"), 64)] {
        let before = emu.requests().len();
        let sb = Sandbox::new();
        let mut cmd = sb.command(&[
            "metadata",
            "--provider",
            "azure",
            "--imds-endpoint",
            &emu.url(),
            "--timeout",
            "10s",
        ]);
        cmd.env("BOOTSTAGE_AZURE_WIRESERVER", emu.url());
        if let Some(asked) = asked {
            cmd.env("BOOTSTAGE_AZURE_REPORT_READY", asked);
        }
        let out = common::run(cmd).await;
        let requests: Vec<_> = emu.requests().into_iter().skip(before).collect();
        let reports: Vec<_> = requests.iter().filter(wireserver).collect();
        match asked {
            Some("true") => {
                assert_eq!(out.code, code, "{}", out.stderr);
                assert!(sb.read("params.json").is_some());
                assert_eq!(reports.len(), 2, "{reports:?}");
                let (goal, health) = (reports[0], reports[1]);
                assert_eq!(
                    (goal.method.as_str(), goal.query.as_deref(), goal.status),
                    ("GET", Some("comp=goalstate"), Some(200))
                );
                assert_eq!(
                    (
                        health.method.as_str(),
                        health.query.as_deref(),
                        health.status
                    ),
                    ("POST", Some("comp=health"), Some(200))
                );
                assert_eq!(
                    health.body.as_deref(),
                    Some(
                        r#"<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>7</GoalStateIncarnation>
  <Container>
    <ContainerId>c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0</InstanceId>
        <Health>
          <State>Ready</State>
        </Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
"#
                    )
                );
                // The report is the run's last request.
                assert!(std::ptr::eq(*requests.last().as_ref().unwrap(), health));
            }
            None => {
                assert_eq!(out.code, code, "{}", out.stderr);
                assert!(reports.is_empty(), "{reports:?}");
            }
            Some(_) => {
                common::assert_exit(
                    &out,
                    code,
                    "BOOTSTAGE_AZURE_REPORT_READY=\"maybe\": expected true or false",
                );
                assert_eq!(sb.read("params.json"), None);
                assert!(reports.is_empty(), "{reports:?}");
            }
        }
    }
}

/// The emulator's wireserver wants `x-ms-version: 2012-11-30`, as Azure's does.
#[tokio::test(flavor = "multi_thread")]
async fn the_wireserver_emulator_wants_its_version_header() {
    let emu = Emulator::start(flavor(Flavor::Azure, Config::default()))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/machine/?comp=goalstate", emu.url());
    assert_eq!(http.get(&url).send().await.unwrap().status(), 400);
    let goal = http
        .get(&url)
        .header("x-ms-version", "2012-11-30")
        .send()
        .await
        .unwrap();
    assert_eq!(goal.status(), 200);
    assert!(
        goal.text()
            .await
            .unwrap()
            .contains("<Incarnation>1</Incarnation>")
    );
}

/// Azure's IMDS answers 410 Gone for a while after boot ("retry after some time"): it
/// is waited out, and the boot goes on (the ready report included).
#[tokio::test(flavor = "multi_thread")]
async fn azure_410_gone_is_waited_out() {
    let emu = Emulator::start(Config {
        gone_first: 4,
        ..flavor(Flavor::Azure, aws(PARAMS.as_bytes()))
    })
    .await
    .unwrap();
    let sb = Sandbox::new();
    let mut cmd = sb.command(&[
        "metadata",
        "--provider",
        "azure",
        "--imds-endpoint",
        &emu.url(),
        "--timeout",
        "10s",
    ]);
    cmd.env("BOOTSTAGE_AZURE_WIRESERVER", emu.url())
        .env("BOOTSTAGE_AZURE_REPORT_READY", "true");
    let out = common::run(cmd).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..4], [Some(410); 4], "{statuses:?}");
    assert!(
        statuses[4..].iter().all(|s| *s == Some(200)),
        "{statuses:?}"
    );
    assert!(sb.read("params.json").is_some());
}

/// Azure's IMDS may answer 404 for the instance document while the VM is provisioned
/// (cloud-init retries it): waited out like a 410, the facts read once it is served.
#[tokio::test(flavor = "multi_thread")]
async fn azure_instance_document_404_is_waited_out() {
    let mut config = flavor(Flavor::Azure, aws(PARAMS.as_bytes()));
    config.azure.instance_missing_first = 3;
    let emu = Emulator::start(config).await.unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--provider", "azure", "--timeout", "10s"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let documents: Vec<_> = emu
        .requests()
        .iter()
        .filter(|r| r.path == "/metadata/instance")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        documents,
        [Some(404), Some(404), Some(404), Some(200)],
        "{}",
        out.stderr
    );
    let instance: serde_json::Value =
        serde_json::from_str(&sb.read("instance.json").unwrap()).unwrap();
    assert_eq!(
        instance["instance_id"],
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    assert!(sb.read("params.json").is_some());
}

/// A 404 for the instance document in any form but Azure's JSON error is not Azure's
/// IMDS (here EC2's, asked as Azure by mistake): not waited for, the stage fails at once,
/// having asked for it once.
#[tokio::test(flavor = "multi_thread")]
async fn azure_asked_of_a_server_that_is_not_azure_fails_at_once() {
    let emu = Emulator::start(aws(PARAMS.as_bytes())).await.unwrap();
    let sb = Sandbox::new();
    let out = sb
        .metadata(&emu.url(), &["--provider", "azure", "--timeout", "10s"])
        .await;
    assert_eq!(out.code, 75, "{}", out.stderr);
    let documents = emu
        .requests()
        .iter()
        .filter(|r| r.path == "/metadata/instance")
        .count();
    assert_eq!(documents, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("GET /metadata/instance?api-version=2021-02-01: not found"),
        "{}",
        out.stderr
    );
}

/// The sandbox leaves every provider's metadata service on a closed loopback port: named
/// and not pointed at an emulator, each fails at its deadline having asked 127.0.0.1:9,
/// and its messages name no real metadata address.
#[tokio::test(flavor = "multi_thread")]
async fn every_provider_left_unpointed_asks_only_a_closed_loopback_port() {
    for provider in ["aws", "gcp", "azure", "openstack"] {
        let sb = Sandbox::new();
        let out = sb
            .run(&["metadata", "--provider", provider, "--timeout", "1s"])
            .await;
        assert_eq!(out.code, 75, "{provider}: {}", out.stderr);
        assert!(
            out.stderr.contains("127.0.0.1:9"),
            "{provider}: {}",
            out.stderr
        );
        for real in ["169.254.", "168.63.", "metadata.google.internal"] {
            assert!(!out.stderr.contains(real), "{provider}: {}", out.stderr);
        }
    }
}
