//! An emulator of the two orchestrator APIs bootstage signals, over real HTTP on loopback,
//! speaking the AWS Query protocol (form-encoded POST, XML answers) that the real SDK
//! clients speak, for the calls moto does not serve:
//!
//! - Auto Scaling (`Version=2011-01-01`): `RecordLifecycleActionHeartbeat`,
//!   `CompleteLifecycleAction`, `DescribeAutoScalingInstances`, `DescribeLifecycleHooks`.
//!   Each instance of a configured group starts in a launch lifecycle action (`Pending:Wait`)
//!   with its hook's heartbeat timeout: a heartbeat extends it, a completion ends it, and
//!   when neither comes in time the action ends with the hook's default result, as AWS
//!   does; the global timeout (100 × heartbeat timeout, at most 48 h) ends it too. A call
//!   for an instance with no action in progress gets AWS's `ValidationError`
//!   "No active Lifecycle Action found with instance ID …".
//! - CloudFormation (`Version=2010-05-15`): `SignalResource`. A configured resource takes
//!   `count` signals (its creation policy's count), one per `UniqueId`: a repeated
//!   `UniqueId` is accepted and not counted again, as AWS does. A FAILURE fails the
//!   resource at once and the stack rolls back. The stack is `CREATE_COMPLETE` once every
//!   resource has its signals; a signal to a stack that is no longer in progress gets AWS's
//!   `ValidationError` "Stack arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/ID is in
//!   CREATE_COMPLETE state and cannot be signaled" (`ROLLBACK_COMPLETE` after a failure).
//!
//! A test can script throttling (the next N calls answer `Throttling`, HTTP 400, as both
//! services do), refusals (`AccessDenied`, HTTP 403, naming the caller and the resource
//! as AWS's do), and Auto Scaling's `ResourceContention` (HTTP 500, as its service model
//! says: "a pending update" to the group). Every API call is recorded with its
//! parameters, its answer, and the wall clock time, so a boot test can compare it with
//! systemd's own timestamps.
//!
//! ARNs: the region is the one the caller signed for (its SigV4 credential scope), the
//! account is `Config::account`, group and stack ids are UUIDs derived from their names.
//!
//! Control from another process: `GET /_emulator/calls`, `GET /_emulator/actions`,
//! `GET /_emulator/stacks` (JSON), `POST /_emulator/throttle`, `POST /_emulator/contend`
//! (body: N). These are not recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

const ASG_VERSION: &str = "2011-01-01";
const CFN_VERSION: &str = "2010-05-15";
const ASG_NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
const CFN_NS: &str = "http://cloudformation.amazonaws.com/doc/2010-05-15/";
/// AWS's cap on a lifecycle action, whatever its heartbeats.
const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// An auto scaling group with one launch lifecycle hook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub hook: String,
    /// The hook's heartbeat timeout in seconds (AWS allows 30–7200; the emulator takes any,
    /// so a test need not wait half a minute).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_timeout: f64,
    /// What the group does when the action times out: `ABANDON` (AWS's default) or `CONTINUE`.
    #[serde(default = "default_result")]
    pub default_result: String,
    /// Instances in a launch lifecycle action from the start.
    pub instances: Vec<String>,
}

fn default_heartbeat() -> f64 {
    3600.0
}

fn default_result() -> String {
    "ABANDON".into()
}

/// A CloudFormation stack whose resources wait for `count` signals each.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    pub name: String,
    pub resources: Vec<String>,
    #[serde(default = "one")]
    pub count: usize,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub groups: Vec<Group>,
    pub stacks: Vec<Stack>,
    /// The first N API calls are answered `Throttling`.
    pub throttle_first: u64,
    /// API calls from number `throttle_first` on, up to this number, are answered
    /// `AccessDenied` (HTTP 403): a policy without the action.
    pub deny_until: u64,
    /// The next N Auto Scaling calls that are neither throttled nor denied are answered
    /// `ResourceContention` (HTTP 500). CloudFormation calls pass: AWS documents the
    /// fault for Auto Scaling only.
    pub contention: u64,
    /// The account in ARNs.
    pub account: String,
    /// The caller an `AccessDenied` names. By default an instance profile's role session,
    /// named for the instance the call is about, as EC2 names it:
    /// `arn:aws:sts::ACCOUNT:assumed-role/bootstage-instance/i-…`.
    pub caller: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            groups: Vec::new(),
            stacks: Vec::new(),
            throttle_first: 0,
            deny_until: 0,
            contention: 0,
            account: "123456789012".into(),
            caller: None,
        }
    }
}

/// One API call as the emulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    /// `autoscaling` or `cloudformation`.
    pub service: String,
    pub action: String,
    /// Every form parameter but `Action` and `Version`.
    pub params: BTreeMap<String, String>,
    pub status: u16,
    /// The error code answered, if any.
    pub error: Option<String>,
    /// Seconds since the emulator started.
    pub at: f64,
    /// Wall clock, microseconds since the Unix epoch.
    pub unix_usec: u64,
    /// CLOCK_MONOTONIC in microseconds: a container shares it with the host, so it
    /// compares with systemd's `…TimestampMonotonic` properties inside one.
    pub monotonic_usec: u64,
}

/// How a lifecycle action ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `CONTINUE` or `ABANDON`.
    pub result: String,
    /// `complete` (a CompleteLifecycleAction) or `timeout`.
    pub by: String,
}

struct Action {
    group: String,
    hook: String,
    heartbeat_timeout: Duration,
    default_result: String,
    started: Instant,
    expires: Instant,
    heartbeats: u64,
    outcome: Option<Outcome>,
}

impl Action {
    /// Ends the action with its default result if a timeout has passed.
    fn expire(&mut self, now: Instant) {
        let global = (self.heartbeat_timeout * 100).min(MAX_GLOBAL_TIMEOUT);
        if self.outcome.is_none() && (now >= self.expires || now >= self.started + global) {
            self.outcome = Some(Outcome {
                result: self.default_result.clone(),
                by: "timeout".into(),
            });
        }
    }
}

/// The state of one instance's lifecycle action, for tests.
#[derive(Clone, Debug, Serialize)]
pub struct ActionState {
    pub group: String,
    pub hook: String,
    pub heartbeats: u64,
    pub outcome: Option<Outcome>,
}

/// One signal a stack resource counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    pub unique_id: String,
    /// `SUCCESS` or `FAILURE`.
    pub status: String,
}

/// A stack resource: the signals it waits for, and those it counted (one per `UniqueId`).
#[derive(Clone, Debug, Serialize)]
pub struct ResourceState {
    pub count: usize,
    pub signals: Vec<Signal>,
}

impl ResourceState {
    /// `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, or `CREATE_FAILED` (a FAILURE signal).
    pub fn status(&self) -> &'static str {
        if self.signals.iter().any(|s| s.status == "FAILURE") {
            "CREATE_FAILED"
        } else if self.signals.len() >= self.count {
            "CREATE_COMPLETE"
        } else {
            "CREATE_IN_PROGRESS"
        }
    }
}

/// A stack as it stands: its id (the last part of its ARN) and its resources.
#[derive(Clone, Debug, Serialize)]
pub struct StackState {
    pub id: String,
    pub resources: BTreeMap<String, ResourceState>,
}

impl StackState {
    /// `CREATE_IN_PROGRESS` while a resource waits, `CREATE_COMPLETE` once all have their
    /// signals, `ROLLBACK_COMPLETE` once one failed (the emulator rolls back at once).
    pub fn status(&self) -> &'static str {
        let statuses: Vec<_> = self.resources.values().map(ResourceState::status).collect();
        if statuses.contains(&"CREATE_FAILED") {
            "ROLLBACK_COMPLETE"
        } else if statuses.iter().all(|s| *s == "CREATE_COMPLETE") {
            "CREATE_COMPLETE"
        } else {
            "CREATE_IN_PROGRESS"
        }
    }
}

struct Shared {
    started: Instant,
    config: Mutex<Config>,
    actions: Mutex<BTreeMap<String, Action>>,
    stacks: Mutex<BTreeMap<String, StackState>>,
    calls: Mutex<Vec<Call>>,
    counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Emulator {
    /// Starts on an ephemeral loopback port.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`, which must be a loopback address.
    pub async fn bind(addr: SocketAddr, config: Config) -> std::io::Result<Emulator> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("refusing to listen on {addr}: the emulator serves loopback only"),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let mut actions = BTreeMap::new();
        for group in &config.groups {
            let heartbeat_timeout = Duration::from_secs_f64(group.heartbeat_timeout);
            for instance in &group.instances {
                actions.insert(
                    instance.clone(),
                    Action {
                        group: group.name.clone(),
                        hook: group.hook.clone(),
                        heartbeat_timeout,
                        default_result: group.default_result.clone(),
                        started: now,
                        expires: now + heartbeat_timeout,
                        heartbeats: 0,
                        outcome: None,
                    },
                );
            }
        }
        let stacks = config
            .stacks
            .iter()
            .map(|s| {
                let resources = s
                    .resources
                    .iter()
                    .map(|r| {
                        let state = ResourceState {
                            count: s.count,
                            signals: Vec::new(),
                        };
                        (r.clone(), state)
                    })
                    .collect();
                let id = uuid_of("stack", &s.name);
                (s.name.clone(), StackState { id, resources })
            })
            .collect();
        let shared = Arc::new(Shared {
            started: now,
            config: Mutex::new(config),
            actions: Mutex::new(actions),
            stacks: Mutex::new(stacks),
            calls: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Emulator { addr, shared, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`: set it as `AWS_ENDPOINT_URL_AUTO_SCALING`
    /// and `AWS_ENDPOINT_URL_CLOUDFORMATION`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every API call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Each instance's lifecycle action as it stands now (timeouts applied).
    pub fn actions(&self) -> BTreeMap<String, ActionState> {
        self.shared.actions()
    }

    /// The next `n` API calls answer `Throttling`.
    pub fn throttle_next(&self, n: u64) {
        let done = self.shared.counter.load(Ordering::SeqCst);
        lock(&self.shared.config).throttle_first = done + n;
    }

    /// The next `n` API calls answer `AccessDenied`.
    pub fn deny_next(&self, n: u64) {
        let done = self.shared.counter.load(Ordering::SeqCst);
        let mut config = lock(&self.shared.config);
        config.throttle_first = config.throttle_first.min(done);
        config.deny_until = done + n;
    }

    /// The next `n` Auto Scaling calls answer `ResourceContention`.
    pub fn contend_next(&self, n: u64) {
        lock(&self.shared.config).contention = n;
    }

    /// Each stack as it stands now: its resources and the signals they counted.
    pub fn stacks(&self) -> BTreeMap<String, StackState> {
        lock(&self.shared.stacks).clone()
    }
}

impl Shared {
    fn actions(&self) -> BTreeMap<String, ActionState> {
        let now = Instant::now();
        lock(&self.actions)
            .iter_mut()
            .map(|(id, a)| {
                a.expire(now);
                (
                    id.clone(),
                    ActionState {
                        group: a.group.clone(),
                        hook: a.hook.clone(),
                        heartbeats: a.heartbeats,
                        outcome: a.outcome.clone(),
                    },
                )
            })
            .collect()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(control) = uri.path().strip_prefix("/_emulator/") {
        return control_reply(&shared, &method, control, &body);
    }
    let mut params: BTreeMap<String, String> = form_urlencoded::parse(&body)
        .chain(form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let action = params.remove("Action").unwrap_or_default();
    let version = params.remove("Version").unwrap_or_default();
    let (service, ns) = match version.as_str() {
        ASG_VERSION => ("autoscaling", ASG_NS),
        CFN_VERSION => ("cloudformation", CFN_NS),
        _ => ("unknown", ASG_NS),
    };
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let region = signed_region(&headers);
    let fault = {
        let mut config = lock(&shared.config);
        if n < config.throttle_first {
            Some(("Throttling", "Rate exceeded".to_string()))
        } else if n < config.deny_until {
            Some((
                "AccessDenied",
                refusal(&shared, &config, &region, service, &action, &params),
            ))
        } else if service == "autoscaling" && config.contention > 0 {
            config.contention -= 1;
            Some(("ResourceContention", CONTENTION.to_string()))
        } else {
            None
        }
    };
    let answer = match (fault, service) {
        (Some(fault), _) => Err(fault),
        (None, "autoscaling") => autoscaling(&shared, &action, &params),
        (None, "cloudformation") => cloudformation(&shared, &region, &action, &params),
        _ => Err((
            "InvalidAction",
            format!("unknown Version {version:?} for action {action:?}"),
        )),
    };
    let (status, error, xml) = match answer {
        Ok(result) => (StatusCode::OK, None, success(&action, ns, &result)),
        Err((code, message)) => (
            match code {
                "AccessDenied" => StatusCode::FORBIDDEN,
                // Auto Scaling's model: `"httpStatusCode": 500`, a sender fault.
                "ResourceContention" => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
            Some(code.to_string()),
            failure(ns, code, &message),
        ),
    };
    let unix_usec = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    let monotonic_usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_micros() as u64)
        .unwrap_or_default();
    lock(&shared.calls).push(Call {
        service: service.into(),
        action,
        params,
        status: status.as_u16(),
        error,
        at: shared.started.elapsed().as_secs_f64(),
        unix_usec,
        monotonic_usec,
    });
    (status, [(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

fn control_reply(shared: &Shared, method: &Method, what: &str, body: &[u8]) -> Response {
    let json = |v: serde_json::Value| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    match (method.as_str(), what) {
        ("GET", "calls") => json(serde_json::json!(*lock(&shared.calls))),
        ("GET", "actions") => json(serde_json::json!(shared.actions())),
        ("GET", "stacks") => json(serde_json::json!(*lock(&shared.stacks))),
        ("POST", "throttle") => {
            let n: u64 = String::from_utf8_lossy(body).trim().parse().unwrap_or(0);
            let done = shared.counter.load(Ordering::SeqCst);
            lock(&shared.config).throttle_first = done + n;
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", "contend") => {
            let n: u64 = String::from_utf8_lossy(body).trim().parse().unwrap_or(0);
            lock(&shared.config).contention = n;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

type Answer = Result<String, (&'static str, String)>;

/// Auto Scaling's documented meaning of `ResourceContention`, as the message.
const CONTENTION: &str = "You already have a pending update to an Amazon EC2 Auto Scaling resource (for example, an Auto Scaling group, instance, or load balancer).";

/// The region in the request's SigV4 credential scope
/// (`Credential=KEY/DATE/REGION/SERVICE/aws4_request`), else `us-east-1`.
fn signed_region(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(2))
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1")
        .to_string()
}

/// A stable UUID for a named thing (FNV-1a of `kind/name`, twice): the ids in ARNs.
fn uuid_of(kind: &str, name: &str) -> String {
    let fnv = |seed: u64| {
        format!("{kind}/{name}").bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// A stack's name, given its name or its ARN (`…:stack/NAME/ID`).
fn stack_name(given: &str) -> &str {
    match given.strip_prefix("arn:") {
        Some(arn) => arn
            .split_once(":stack/")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .unwrap_or(given),
        None => given,
    }
}

fn stack_arn(region: &str, account: &str, name: &str, id: &str) -> String {
    format!("arn:aws:cloudformation:{region}:{account}:stack/{name}/{id}")
}

/// AWS's `AccessDenied` message: who called, the action, the resource for an action that
/// takes one (Describe calls take none), and why.
fn refusal(
    shared: &Shared,
    config: &Config,
    region: &str,
    service: &str,
    action: &str,
    params: &BTreeMap<String, String>,
) -> String {
    let account = &config.account;
    let caller = config.caller.clone().unwrap_or_else(|| {
        let session = ["InstanceId", "UniqueId", "InstanceIds.member.1"]
            .iter()
            .find_map(|k| params.get(*k))
            .map_or("bootstage", String::as_str);
        format!("arn:aws:sts::{account}:assumed-role/bootstage-instance/{session}")
    });
    let resource = match action {
        "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat" => {
            params.get("AutoScalingGroupName").map(|group| {
                let id = match config.groups.iter().any(|g| &g.name == group) {
                    true => uuid_of("autoScalingGroup", group),
                    false => "*".into(),
                };
                format!(
                    "arn:aws:autoscaling:{region}:{account}:autoScalingGroup:{id}:autoScalingGroupName/{group}"
                )
            })
        }
        "SignalResource" => params.get("StackName").map(|given| {
            let name = stack_name(given);
            let id = lock(&shared.stacks)
                .get(name)
                .map_or_else(|| "*".to_string(), |s| s.id.clone());
            stack_arn(region, account, name, &id)
        }),
        _ => None,
    };
    let on = resource
        .map(|r| format!(" on resource: {r}"))
        .unwrap_or_default();
    format!(
        "User: {caller} is not authorized to perform: {service}:{action}{on} because no identity-based policy allows the {service}:{action} action"
    )
}

fn required<'a>(
    params: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, (&'static str, String)> {
    params.get(name).map(String::as_str).ok_or_else(|| {
        (
            "ValidationError",
            format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"),
        )
    })
}

/// `prefix.member.1`, `prefix.member.2` … in order.
fn members(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|i| params.get(&format!("{prefix}.member.{i}")).cloned())
        .collect()
}

fn autoscaling(shared: &Shared, action: &str, params: &BTreeMap<String, String>) -> Answer {
    let now = Instant::now();
    match action {
        "RecordLifecycleActionHeartbeat" | "CompleteLifecycleAction" => {
            let group = required(params, "AutoScalingGroupName")?;
            let hook = required(params, "LifecycleHookName")?;
            let instance = required(params, "InstanceId")?;
            let result = match action {
                "CompleteLifecycleAction" => {
                    let result = required(params, "LifecycleActionResult")?;
                    if result != "CONTINUE" && result != "ABANDON" {
                        return Err((
                            "ValidationError",
                            "LifecycleActionResult must be CONTINUE or ABANDON".into(),
                        ));
                    }
                    Some(result.to_string())
                }
                _ => None,
            };
            let mut actions = lock(&shared.actions);
            let no_action = || {
                (
                    "ValidationError",
                    format!("No active Lifecycle Action found with instance ID {instance}"),
                )
            };
            let a = actions.get_mut(instance).ok_or_else(no_action)?;
            a.expire(now);
            if a.outcome.is_some() || a.group != group || a.hook != hook {
                return Err(no_action());
            }
            match result {
                Some(result) => {
                    a.outcome = Some(Outcome {
                        result,
                        by: "complete".into(),
                    })
                }
                None => {
                    a.heartbeats += 1;
                    a.expires = now + a.heartbeat_timeout;
                }
            }
            Ok(String::new())
        }
        "DescribeAutoScalingInstances" => {
            let wanted = members(params, "InstanceIds");
            let mut actions = lock(&shared.actions);
            let mut xml = String::from("<AutoScalingInstances>");
            for (id, a) in actions.iter_mut() {
                if !wanted.is_empty() && !wanted.contains(id) {
                    continue;
                }
                a.expire(now);
                let state = match a.outcome.as_ref().map(|o| o.result.as_str()) {
                    None => "Pending:Wait",
                    Some("CONTINUE") => "InService",
                    Some(_) => "Terminating",
                };
                xml += &format!(
                    "<member><InstanceId>{}</InstanceId><InstanceType>t3.micro</InstanceType><AutoScalingGroupName>{}</AutoScalingGroupName><AvailabilityZone>eu-west-1a</AvailabilityZone><LifecycleState>{state}</LifecycleState><HealthStatus>HEALTHY</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>",
                    escape(id),
                    escape(&a.group)
                );
            }
            xml += "</AutoScalingInstances>";
            Ok(xml)
        }
        "DescribeLifecycleHooks" => {
            let group = required(params, "AutoScalingGroupName")?;
            let names = members(params, "LifecycleHookNames");
            let config = lock(&shared.config);
            let Some(g) = config.groups.iter().find(|g| g.name == group) else {
                return Err(("ValidationError", format!("Group {group} not found")));
            };
            let mut xml = String::from("<LifecycleHooks>");
            if names.is_empty() || names.contains(&g.hook) {
                let heartbeat = g.heartbeat_timeout.ceil() as u64;
                let global = (heartbeat * 100).min(MAX_GLOBAL_TIMEOUT.as_secs());
                xml += &format!(
                    "<member><LifecycleHookName>{}</LifecycleHookName><AutoScalingGroupName>{}</AutoScalingGroupName><LifecycleTransition>autoscaling:EC2_INSTANCE_LAUNCHING</LifecycleTransition><HeartbeatTimeout>{heartbeat}</HeartbeatTimeout><GlobalTimeout>{global}</GlobalTimeout><DefaultResult>{}</DefaultResult></member>",
                    escape(&g.hook),
                    escape(&g.name),
                    escape(&g.default_result)
                );
            }
            xml += "</LifecycleHooks>";
            Ok(xml)
        }
        _ => Err((
            "InvalidAction",
            format!("the emulator does not serve Auto Scaling's {action}"),
        )),
    }
}

fn cloudformation(
    shared: &Shared,
    region: &str,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Answer {
    match action {
        "SignalResource" => {
            let given = required(params, "StackName")?;
            let resource = required(params, "LogicalResourceId")?;
            let unique_id = required(params, "UniqueId")?;
            let status = required(params, "Status")?;
            if status != "SUCCESS" && status != "FAILURE" {
                return Err((
                    "ValidationError",
                    "Status must be SUCCESS or FAILURE".into(),
                ));
            }
            let name = stack_name(given);
            let unknown = || {
                (
                    "ValidationError",
                    format!("Stack with id {given} does not exist"),
                )
            };
            // The config's lock before the stacks', never after (`handle` takes both).
            let account = lock(&shared.config).account.clone();
            let mut stacks = lock(&shared.stacks);
            let stack = stacks.get_mut(name).ok_or_else(unknown)?;
            let state = stack.status();
            if state != "CREATE_IN_PROGRESS" {
                let arn = stack_arn(region, &account, name, &stack.id);
                return Err((
                    "ValidationError",
                    format!("Stack {arn} is in {state} state and cannot be signaled"),
                ));
            }
            let r = stack.resources.get_mut(resource).ok_or_else(unknown)?;
            let state = r.status();
            if state != "CREATE_IN_PROGRESS" {
                // A resource done while another of its stack still waits. AWS's words for
                // this case are not on record (public reports quote the stack's); these
                // follow them.
                return Err((
                    "ValidationError",
                    format!("Resource {resource} is in {state} state and cannot be signaled"),
                ));
            }
            // One signal per UniqueId: a repeat is accepted, and not counted again.
            if !r.signals.iter().any(|s| s.unique_id == unique_id) {
                r.signals.push(Signal {
                    unique_id: unique_id.to_string(),
                    status: status.to_string(),
                });
            }
            Ok(String::new())
        }
        _ => Err((
            "InvalidAction",
            format!("the emulator does not serve CloudFormation's {action}"),
        )),
    }
}

fn request_id() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        (n >> 48) as u32,
        n as u64 & 0xffff_ffff_ffff
    )
}

/// `<ActionResponse><ActionResult>…</ActionResult><ResponseMetadata>…` (CloudFormation's
/// SignalResource has no result element, as its model says).
fn success(action: &str, ns: &str, result: &str) -> String {
    let result = match action {
        "SignalResource" => String::new(),
        _ => format!("<{action}Result>{result}</{action}Result>"),
    };
    format!(
        "<{action}Response xmlns=\"{ns}\">{result}<ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        request_id()
    )
}

fn failure(ns: &str, code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{ns}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        escape(message),
        request_id()
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
