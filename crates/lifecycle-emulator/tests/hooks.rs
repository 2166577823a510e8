//! Warm pools and termination hooks through the real Auto Scaling client on loopback: each
//! lifecycle action takes one completion, a second is AWS's ValidationError, heartbeats
//! extend a termination action, and DescribeAutoScalingInstances shows each state.

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::retry::RetryConfig;
use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use lifecycle_emulator::{Config, Emulator, Group, Hook, TerminationHook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LAUNCH: &str = "launch";
const DRAIN: &str = "drain";

fn client(emu: &Emulator) -> Client {
    assert!(emu.url().starts_with("http://127.0.0.1:"));
    let config = aws_sdk_autoscaling::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new(
            "AKIDEMULATOR",
            "secret",
            None,
            None,
            "test",
        ))
        .retry_config(RetryConfig::disabled())
        .endpoint_url(emu.url())
        .build();
    Client::from_conf(config)
}

fn group(name: &str, instances: &[&str]) -> Group {
    Group {
        name: name.into(),
        hook: LAUNCH.into(),
        heartbeat_timeout: 60.0,
        instances: instances.iter().map(|s| s.to_string()).collect(),
        ..Group::default()
    }
}

fn drain(heartbeat_timeout: f64, default_result: &str) -> Option<TerminationHook> {
    Some(Hook {
        name: DRAIN.into(),
        heartbeat_timeout,
        default_result: default_result.into(),
    })
}

/// CompleteLifecycleAction: `Ok` or the error's code and message.
async fn complete(
    asg: &Client,
    group: &str,
    hook: &str,
    id: &str,
    result: &str,
) -> Result<(), (String, String)> {
    asg.complete_lifecycle_action()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .instance_id(id)
        .lifecycle_action_result(result)
        .send()
        .await
        .map(drop)
        .map_err(|e| {
            (
                e.code().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            )
        })
}

async fn heartbeat(asg: &Client, group: &str, hook: &str, id: &str) -> Result<(), String> {
    asg.record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .instance_id(id)
        .send()
        .await
        .map(drop)
        .map_err(|e| e.code().unwrap_or("").to_string())
}

fn no_action(id: &str) -> Result<(), (String, String)> {
    Err((
        "ValidationError".into(),
        format!("No active Lifecycle Action found with instance ID {id}"),
    ))
}

/// DescribeAutoScalingInstances for one instance: its LifecycleState.
async fn state(asg: &Client, id: &str) -> String {
    let answer = asg
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let instances = answer.auto_scaling_instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].instance_id(), Some(id));
    instances[0].lifecycle_state().unwrap().to_string()
}

/// A POST to a control path on a fresh loopback connection: the status and the body.
async fn post(emu: &Emulator, path: &str, body: &str) -> (u16, String) {
    let addr: SocketAddr = emu.url().strip_prefix("http://").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.into(),
    )
}

#[tokio::test]
async fn a_warm_instance_takes_one_continue_per_launch_action() {
    let emu = Emulator::start(Config {
        groups: vec![Group {
            warm_pool: Some("Warmed:Hibernated".into()),
            termination_hook: drain(60.0, "ABANDON"),
            ..group("web", &["i-warm"])
        }],
        ..Config::default()
    })
    .await
    .unwrap();
    let asg = client(&emu);
    let id = "i-warm";

    // Entering the pool: the launch hook's first action.
    assert_eq!(state(&asg, id).await, "Warmed:Pending:Wait");
    let early = emu.into_service(id).unwrap_err();
    assert!(early.contains("Warmed:Pending:Wait"), "{early}");
    assert_eq!(heartbeat(&asg, "web", LAUNCH, id).await, Ok(()));
    assert_eq!(
        complete(&asg, "web", DRAIN, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(
        complete(&asg, "other", LAUNCH, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(complete(&asg, "web", LAUNCH, id, "CONTINUE").await, Ok(()));
    assert_eq!(state(&asg, id).await, "Warmed:Hibernated");
    assert_eq!(
        complete(&asg, "web", LAUNCH, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(
        heartbeat(&asg, "web", LAUNCH, id).await,
        Err("ValidationError".into())
    );

    // Leaving the pool for service: a second action under the same hook.
    let (status, why) = post(&emu, "/_emulator/into-service", "i-unknown").await;
    assert_eq!(status, 409);
    assert!(why.contains("i-unknown"), "{why}");
    assert_eq!(
        post(&emu, "/_emulator/into-service", "i-warm\n").await.0,
        204
    );
    assert_eq!(state(&asg, id).await, "Pending:Wait");
    let (status, why) = post(&emu, "/_emulator/into-service", id).await;
    assert_eq!(status, 409);
    assert!(why.contains("Pending:Wait"), "{why}");
    assert_eq!(
        complete(&asg, "web", DRAIN, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(complete(&asg, "web", LAUNCH, id, "CONTINUE").await, Ok(()));
    assert_eq!(state(&asg, id).await, "InService");
    assert_eq!(
        complete(&asg, "web", LAUNCH, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(
        complete(&asg, "web", LAUNCH, id, "ABANDON").await,
        no_action(id)
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let instance = &emu.actions()[id];
    assert_eq!(instance.state, "InService");
    assert_eq!(instance.kind, "launch");
    assert_eq!(instance.hook, LAUNCH);
    assert_eq!(instance.outcome.as_ref().unwrap().by, "complete");
    let kinds: Vec<_> = instance.actions.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["launch-warm", "launch"]);
    for a in &instance.actions {
        assert_eq!(a.hook, LAUNCH);
        assert_eq!(a.result.as_deref(), Some("CONTINUE"));
        assert_eq!(a.by.as_deref(), Some("complete"));
        let completed = a.completed_at.unwrap();
        assert!(a.started_at <= completed && completed <= now, "{a:?}");
    }
    // Exactly once: one accepted completion each, the repeats refused.
    assert_eq!(instance.actions[0].refused, 1);
    assert_eq!(instance.actions[0].heartbeats, 1);
    assert_eq!(instance.actions[1].refused, 2);
    let accepted = emu
        .calls()
        .iter()
        .filter(|c| c.action == "CompleteLifecycleAction" && c.error.is_none())
        .count();
    assert_eq!(accepted, 2);
}

#[tokio::test]
async fn a_termination_action_completes_once_and_heartbeats_extend_it() {
    let emu = Emulator::start(Config {
        groups: vec![Group {
            termination_hook: drain(2.0, "CONTINUE"),
            ..group("web", &["i-a"])
        }],
        ..Config::default()
    })
    .await
    .unwrap();
    let asg = client(&emu);
    let id = "i-a";

    // Before `terminate`: no termination action to complete, whether launching or in
    // service.
    assert_eq!(state(&asg, id).await, "Pending:Wait");
    assert_eq!(
        complete(&asg, "web", DRAIN, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(complete(&asg, "web", LAUNCH, id, "CONTINUE").await, Ok(()));
    assert_eq!(state(&asg, id).await, "InService");
    assert_eq!(
        complete(&asg, "web", DRAIN, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(
        heartbeat(&asg, "web", DRAIN, id).await,
        Err("ValidationError".into())
    );
    assert!(emu.into_service(id).unwrap_err().contains("InService"));

    assert_eq!(post(&emu, "/_emulator/terminate", id).await.0, 204);
    assert_eq!(state(&asg, id).await, "Terminating:Wait");
    assert_eq!(emu.actions()[id].kind, "termination");
    // Three heartbeats 1.2 s apart keep a 2 s action waiting for 3.6 s.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(heartbeat(&asg, "web", DRAIN, id).await, Ok(()));
    }
    assert_eq!(state(&asg, id).await, "Terminating:Wait");
    assert_eq!(
        complete(&asg, "web", LAUNCH, id, "CONTINUE").await,
        no_action(id)
    );
    assert_eq!(complete(&asg, "web", DRAIN, id, "ABANDON").await, Ok(()));
    assert_eq!(state(&asg, id).await, "Terminating:Proceed");
    assert_eq!(
        complete(&asg, "web", DRAIN, id, "CONTINUE").await,
        no_action(id)
    );
    let again = emu.terminate(id).unwrap_err();
    assert!(again.contains("Terminating:Proceed"), "{again}");
    let (status, _) = post(&emu, "/_emulator/terminate", id).await;
    assert_eq!(status, 409);

    let instance = &emu.actions()[id];
    assert_eq!(instance.state, "Terminating:Proceed");
    let [launch, termination] = &instance.actions[..] else {
        panic!("{:?}", instance.actions);
    };
    assert_eq!(
        (launch.kind.as_str(), launch.refused),
        ("launch", 1),
        "the launch hook's completion during Terminating:Wait"
    );
    assert_eq!(termination.kind, "termination");
    assert_eq!(termination.hook, DRAIN);
    assert_eq!(termination.heartbeats, 3);
    assert_eq!(termination.result.as_deref(), Some("ABANDON"));
    assert_eq!(termination.by.as_deref(), Some("complete"));
    assert_eq!(termination.refused, 1);
    let waited = termination.completed_at.unwrap() - termination.started_at;
    assert!(waited >= 3.6, "{waited}");
}

#[tokio::test]
async fn describe_auto_scaling_instances_shows_each_state() {
    let warm = |name: &str, pool: &str, instances: &[&str]| Group {
        warm_pool: Some(pool.into()),
        termination_hook: drain(60.0, "ABANDON"),
        ..group(name, instances)
    };
    let emu = Emulator::start(Config {
        groups: vec![
            warm("stopped", "Warmed:Stopped", &["i-s1", "i-s2", "i-s3"]),
            Group {
                heartbeat_timeout: 0.3,
                default_result: "CONTINUE".into(),
                ..warm("running", "Warmed:Running", &["i-r1"])
            },
            Group {
                termination_hook: drain(0.3, "ABANDON"),
                ..warm("hibernated", "Warmed:Hibernated", &["i-h1", "i-h2"])
            },
            group("plain", &["i-p1", "i-p2", "i-p3"]),
        ],
        ..Config::default()
    })
    .await
    .unwrap();
    let asg = client(&emu);

    // i-s1 waits to enter the pool; i-s2 is in it; i-s3 is on its way to service.
    for id in ["i-s2", "i-s3", "i-h1", "i-h2"] {
        let group = emu.actions()[id].group.clone();
        complete(&asg, &group, LAUNCH, id, "CONTINUE")
            .await
            .unwrap();
    }
    emu.into_service("i-s3").unwrap();
    // i-h1 leaves the pool through the termination hook, i-h2 abandoned on its way out.
    emu.terminate("i-h1").unwrap();
    emu.into_service("i-h2").unwrap();
    complete(&asg, "hibernated", LAUNCH, "i-h2", "ABANDON")
        .await
        .unwrap();
    // i-p1 waits; i-p2 is in service; i-p3 was terminated while launching, with no
    // termination hook.
    complete(&asg, "plain", LAUNCH, "i-p2", "CONTINUE")
        .await
        .unwrap();
    emu.terminate("i-p3").unwrap();
    assert!(emu.terminate("i-p3").is_err());

    let expected_now = [
        ("i-h1", "Warmed:Terminating:Wait"),
        ("i-h2", "Terminating"),
        ("i-p1", "Pending:Wait"),
        ("i-p2", "InService"),
        ("i-p3", "Terminating:Proceed"),
        ("i-r1", "Warmed:Pending:Wait"),
        ("i-s1", "Warmed:Pending:Wait"),
        ("i-s2", "Warmed:Stopped"),
        ("i-s3", "Pending:Wait"),
    ];
    let all = |asg: Client| async move {
        let answer = asg.describe_auto_scaling_instances().send().await.unwrap();
        answer
            .auto_scaling_instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.lifecycle_state().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let owned = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(all(asg.clone()).await, owned(&expected_now));

    // Timeouts: i-r1's warm action CONTINUEs into its pool, i-h1's termination proceeds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&asg, "i-r1").await, "Warmed:Running");
    assert_eq!(state(&asg, "i-h1").await, "Warmed:Terminating:Proceed");
    let actions = emu.actions();
    let timed_out = actions["i-h1"].outcome.clone().unwrap();
    assert_eq!(
        (timed_out.result.as_str(), timed_out.by.as_str()),
        ("ABANDON", "timeout")
    );
    assert_eq!(actions["i-r1"].outcome.as_ref().unwrap().by, "timeout");
    let cut = &actions["i-p3"].actions[0];
    assert_eq!(
        (cut.result.as_deref(), cut.by.as_deref()),
        (Some("ABANDON"), Some("terminate"))
    );
    assert_eq!(actions["i-p3"].state, "Terminating:Proceed");
    // Terminating from the pool, a warm instance's completions are refused afterwards.
    assert_eq!(
        complete(&asg, "hibernated", DRAIN, "i-h1", "CONTINUE").await,
        no_action("i-h1")
    );
    // Terminating a warmed instance without a termination hook.
    let emu2 = Emulator::start(Config {
        groups: vec![Group {
            warm_pool: Some("Warmed:Stopped".into()),
            ..group("nohook", &["i-n"])
        }],
        ..Config::default()
    })
    .await
    .unwrap();
    let asg2 = client(&emu2);
    complete(&asg2, "nohook", LAUNCH, "i-n", "CONTINUE")
        .await
        .unwrap();
    emu2.terminate("i-n").unwrap();
    assert_eq!(state(&asg2, "i-n").await, "Warmed:Terminating:Proceed");
}

#[tokio::test]
async fn describe_lifecycle_hooks_lists_both_hooks() {
    let emu = Emulator::start(Config {
        groups: vec![
            Group {
                termination_hook: drain(300.0, "CONTINUE"),
                default_result: "ABANDON".into(),
                ..group("web", &[])
            },
            group("plain", &[]),
        ],
        ..Config::default()
    })
    .await
    .unwrap();
    let asg = client(&emu);
    let answer = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("web")
        .send()
        .await
        .unwrap();
    let hooks: Vec<_> = answer
        .lifecycle_hooks()
        .iter()
        .map(|h| {
            (
                h.lifecycle_hook_name().unwrap(),
                h.auto_scaling_group_name().unwrap(),
                h.lifecycle_transition().unwrap(),
                h.heartbeat_timeout().unwrap(),
                h.global_timeout().unwrap(),
                h.default_result().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hooks,
        [
            (
                LAUNCH,
                "web",
                "autoscaling:EC2_INSTANCE_LAUNCHING",
                60,
                6000,
                "ABANDON"
            ),
            (
                DRAIN,
                "web",
                "autoscaling:EC2_INSTANCE_TERMINATING",
                300,
                30000,
                "CONTINUE"
            ),
        ]
    );
    let only = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("web")
        .lifecycle_hook_names(DRAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(only.lifecycle_hooks().len(), 1);
    assert_eq!(only.lifecycle_hooks()[0].lifecycle_hook_name(), Some(DRAIN));
    let plain = asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("plain")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.lifecycle_hooks().len(), 1);
}

#[tokio::test]
async fn a_bad_warm_pool_or_heartbeat_is_a_config_error() {
    for bad in [
        Group {
            warm_pool: Some("Warmed:Pending".into()),
            ..group("web", &["i-1"])
        },
        Group {
            termination_hook: drain(-1.0, "ABANDON"),
            ..group("web", &["i-1"])
        },
    ] {
        let config = Config {
            groups: vec![bad],
            ..Config::default()
        };
        let error = Emulator::start(config).await.err().unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    }
    // And from JSON, as the binary reads it.
    let config: Config = serde_json::from_str(
        r#"{"groups": [{"name": "web", "hook": "launch", "instances": ["i-1"],
            "warm_pool": "Warmed:Running",
            "termination_hook": {"name": "drain", "heartbeat_timeout": 30}}]}"#,
    )
    .unwrap();
    let hook = config.groups[0].termination_hook.clone().unwrap();
    assert_eq!(
        hook,
        TerminationHook {
            name: DRAIN.into(),
            heartbeat_timeout: 30.0,
            default_result: "ABANDON".into()
        }
    );
    let emu = Emulator::start(config).await.unwrap();
    assert_eq!(emu.actions()["i-1"].state, "Warmed:Pending:Wait");
}
