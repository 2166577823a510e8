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
//!   for an instance with no action in progress, or naming a hook other than the one its
//!   action waits under, gets AWS's `ValidationError` "No active Lifecycle Action found
//!   with instance ID …"; so does a second completion of an action (exactly once), which
//!   is also counted as refused on that action.
//!
//!   Warm pools (`Group::warm_pool`): the launch hook fires on entering the pool
//!   (`Warmed:Pending:Wait`) and again on leaving it for service (`Pending:Wait`, on
//!   `Emulator::into_service`), each its own action needing its own completion. A
//!   `CONTINUE` of the first settles the instance directly in the pool's state
//!   (`Warmed:Stopped`, `Warmed:Running` or `Warmed:Hibernated`: the transient
//!   `Warmed:Pending:Proceed` is not reported), of the second directly `InService`
//!   (likewise no `Pending:Proceed`). An `ABANDON` (or a timeout with it) leaves it
//!   `Warmed:Terminating` (`Terminating` from `Pending:Wait`).
//!
//!   Termination (`Group::termination_hook`, `Emulator::terminate`): the instance waits in
//!   `Terminating:Wait` (`Warmed:Terminating:Wait` from the pool) under the termination
//!   hook, heartbeats and timeouts as for launch, and either result of its completion
//!   leaves it `Terminating:Proceed` (`Warmed:Terminating:Proceed`). Without the hook it
//!   goes there at once. A launch action still waiting ends first (`ABANDON`, by
//!   `terminate`).
//!
//!   `DescribeAutoScalingInstances` reports each instance's LifecycleState as above;
//!   `DescribeLifecycleHooks` lists the launch hook (`autoscaling:EC2_INSTANCE_LAUNCHING`)
//!   and the termination hook (`autoscaling:EC2_INSTANCE_TERMINATING`).
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
//! Control from another process: `GET /_emulator/calls`, `GET /_emulator/actions` (each
//! instance's state and lifecycle actions), `GET /_emulator/stacks` (JSON),
//! `POST /_emulator/throttle`, `POST /_emulator/contend` (body: N),
//! `POST /_emulator/into-service`, `POST /_emulator/terminate` (body: an instance id;
//! 204, or 409 with the reason). These are not recorded.

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

/// An auto scaling group with a launch lifecycle hook, and optionally a warm pool and a
/// termination lifecycle hook.
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
    /// Instances in a launch lifecycle action from the start (`Pending:Wait`, or
    /// `Warmed:Pending:Wait` with a warm pool).
    pub instances: Vec<String>,
    /// A warm pool, named by the state its instances wait in: `Warmed:Stopped`,
    /// `Warmed:Running` or `Warmed:Hibernated`. With one, each instance starts entering the
    /// pool (`Warmed:Pending:Wait`, under the launch hook) and leaves it for service on
    /// `Emulator::into_service`. `None`: no pool.
    #[serde(default)]
    pub warm_pool: Option<String>,
    /// A lifecycle hook on termination (`Emulator::terminate`); `None`: none.
    #[serde(default)]
    pub termination_hook: Option<TerminationHook>,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            name: String::new(),
            hook: String::new(),
            heartbeat_timeout: default_heartbeat(),
            default_result: default_result(),
            instances: Vec::new(),
            warm_pool: None,
            termination_hook: None,
        }
    }
}

/// The states a warm pool keeps its instances in.
pub const WARM_POOL_STATES: [&str; 3] = ["Warmed:Stopped", "Warmed:Running", "Warmed:Hibernated"];

/// A group's termination lifecycle hook (`autoscaling:EC2_INSTANCE_TERMINATING`); its
/// fields mean what the launch hook's do in `Group`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminationHook {
    pub name: String,
    /// Seconds, as `Group::heartbeat_timeout`.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_timeout: f64,
    /// `ABANDON` (AWS's default) or `CONTINUE`: on termination both let it proceed.
    #[serde(default = "default_result")]
    pub default_result: String,
}

/// `TerminationHook` by its shorter name.
pub type Hook = TerminationHook;

impl Default for TerminationHook {
    fn default() -> TerminationHook {
        TerminationHook {
            name: String::new(),
            heartbeat_timeout: default_heartbeat(),
            default_result: default_result(),
        }
    }
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
    /// `complete` (a CompleteLifecycleAction), `timeout`, or `terminate` (a launch action
    /// cut short by `Emulator::terminate`, as `ABANDON`).
    pub by: String,
}

/// What a lifecycle action is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Entering the warm pool (launch hook).
    LaunchWarm,
    /// Entering service (launch hook), at launch or from the warm pool.
    Launch,
    /// Leaving the group (termination hook).
    Termination,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LaunchWarm => "launch-warm",
            Kind::Launch => "launch",
            Kind::Termination => "termination",
        }
    }
}

/// A hook as the actions under it need it.
#[derive(Clone)]
struct HookSpec {
    name: String,
    heartbeat_timeout: Duration,
    default_result: String,
}

impl HookSpec {
    fn new(name: &str, heartbeat_timeout: f64, default_result: &str) -> std::io::Result<HookSpec> {
        let heartbeat_timeout = Duration::try_from_secs_f64(heartbeat_timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                invalid(format!(
                    "hook {name}: heartbeat_timeout must be a positive number of seconds, not {heartbeat_timeout}"
                ))
            })?;
        Ok(HookSpec {
            name: name.to_string(),
            heartbeat_timeout,
            default_result: default_result.to_string(),
        })
    }

    /// A new action under this hook, waiting from `now`.
    fn start(&self, kind: Kind, warmed: bool, now: Instant) -> Action {
        Action {
            kind,
            warmed,
            hook: self.name.clone(),
            heartbeat_timeout: self.heartbeat_timeout,
            default_result: self.default_result.clone(),
            started: now,
            started_unix: unix_now(),
            expires: now + self.heartbeat_timeout,
            heartbeats: 0,
            outcome: None,
            ended: None,
            refused: 0,
        }
    }
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
}

/// Wall clock: seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

struct Action {
    kind: Kind,
    /// In or from the warm pool (a `Warmed:` state).
    warmed: bool,
    hook: String,
    heartbeat_timeout: Duration,
    default_result: String,
    started: Instant,
    started_unix: f64,
    expires: Instant,
    heartbeats: u64,
    outcome: Option<Outcome>,
    /// When the outcome came (the deadline, for a timeout).
    ended: Option<Instant>,
    /// CompleteLifecycleAction calls for it refused after it ended.
    refused: u64,
}

impl Action {
    /// Ends the action with its default result if a timeout has passed.
    fn expire(&mut self, now: Instant) {
        let global = (self.heartbeat_timeout * 100).min(MAX_GLOBAL_TIMEOUT);
        let deadline = self.expires.min(self.started + global);
        if self.outcome.is_none() && now >= deadline {
            let result = self.default_result.clone();
            self.end(result, "timeout", deadline);
        }
    }

    fn end(&mut self, result: String, by: &str, at: Instant) {
        self.outcome = Some(Outcome {
            result,
            by: by.into(),
        });
        self.ended = Some(at);
    }

    fn record(&self) -> ActionRecord {
        let unix = |t: Instant| self.started_unix + t.duration_since(self.started).as_secs_f64();
        ActionRecord {
            hook: self.hook.clone(),
            kind: self.kind.name().into(),
            result: self.outcome.as_ref().map(|o| o.result.clone()),
            by: self.outcome.as_ref().map(|o| o.by.clone()),
            heartbeats: self.heartbeats,
            started_at: self.started_unix,
            completed_at: self.ended.map(unix),
            refused: self.refused,
        }
    }
}

/// An instance of a configured group.
struct Member {
    group: String,
    launch: HookSpec,
    termination: Option<HookSpec>,
    /// The warm pool's state, if the group has a pool.
    pool: Option<String>,
    /// Every lifecycle action so far, the last one perhaps in progress (never empty).
    actions: Vec<Action>,
    /// Where `Emulator::terminate` left it without a termination hook.
    terminated: Option<&'static str>,
}

impl Member {
    /// Applies a timeout to the action in progress (the others have ended).
    fn expire(&mut self, now: Instant) {
        if let Some(a) = self.actions.last_mut() {
            a.expire(now);
        }
    }

    /// Its LifecycleState as DescribeAutoScalingInstances reports it (after `expire`).
    fn state(&self) -> String {
        if let Some(state) = self.terminated {
            return state.into();
        }
        let Some(a) = self.actions.last() else {
            return "InService".into();
        };
        let result = a.outcome.as_ref().map(|o| o.result.as_str());
        let state = match (a.kind, result) {
            (Kind::LaunchWarm, None) => "Warmed:Pending:Wait",
            (Kind::LaunchWarm, Some("CONTINUE")) => {
                return self.pool.clone().unwrap_or_else(|| "Warmed:Stopped".into());
            }
            (Kind::LaunchWarm, Some(_)) => "Warmed:Terminating",
            (Kind::Launch, None) => "Pending:Wait",
            (Kind::Launch, Some("CONTINUE")) => "InService",
            (Kind::Launch, Some(_)) => "Terminating",
            (Kind::Termination, None) if a.warmed => "Warmed:Terminating:Wait",
            (Kind::Termination, None) => "Terminating:Wait",
            (Kind::Termination, Some(_)) if a.warmed => "Warmed:Terminating:Proceed",
            (Kind::Termination, Some(_)) => "Terminating:Proceed",
        };
        state.into()
    }

    /// The action waiting under `hook`, if any (after `expire`).
    fn waiting(&mut self, hook: &str) -> Option<&mut Action> {
        self.actions
            .last_mut()
            .filter(|a| a.outcome.is_none() && a.hook == hook)
    }
}

/// The state of one instance and its lifecycle actions, for tests. `hook`, `heartbeats`
/// and `outcome` are those of its latest action (the one in progress, if any).
#[derive(Clone, Debug, Serialize)]
pub struct ActionState {
    pub group: String,
    pub hook: String,
    pub heartbeats: u64,
    pub outcome: Option<Outcome>,
    /// Its LifecycleState, as DescribeAutoScalingInstances reports it.
    pub state: String,
    /// The latest action's kind: `launch-warm`, `launch` or `termination`.
    pub kind: String,
    /// Every action so far, oldest first.
    pub actions: Vec<ActionRecord>,
}

/// One lifecycle action of an instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionRecord {
    pub hook: String,
    /// `launch-warm` (entering the warm pool), `launch` (entering service) or
    /// `termination`.
    pub kind: String,
    /// `CONTINUE` or `ABANDON`; `None` while it waits.
    pub result: Option<String>,
    /// As `Outcome::by`; `None` while it waits.
    pub by: Option<String>,
    pub heartbeats: u64,
    /// Wall clock, seconds since the Unix epoch.
    pub started_at: f64,
    /// Wall clock, seconds since the Unix epoch, when it ended (its deadline, for a
    /// timeout); `None` while it waits.
    pub completed_at: Option<f64>,
    /// CompleteLifecycleAction calls naming its hook that were refused after it ended
    /// (the accepted completion is `by == "complete"`): exactly once means 1 and any.
    pub refused: u64,
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
    members: Mutex<BTreeMap<String, Member>>,
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
        let mut members = BTreeMap::new();
        for group in &config.groups {
            if let Some(pool) = &group.warm_pool
                && !WARM_POOL_STATES.contains(&pool.as_str())
            {
                return Err(invalid(format!(
                    "group {}: warm_pool must be one of {}, not {pool:?}",
                    group.name,
                    WARM_POOL_STATES.join(", ")
                )));
            }
            let launch =
                HookSpec::new(&group.hook, group.heartbeat_timeout, &group.default_result)?;
            let termination = match &group.termination_hook {
                Some(h) => Some(HookSpec::new(
                    &h.name,
                    h.heartbeat_timeout,
                    &h.default_result,
                )?),
                None => None,
            };
            let (kind, warmed) = match group.warm_pool {
                Some(_) => (Kind::LaunchWarm, true),
                None => (Kind::Launch, false),
            };
            for instance in &group.instances {
                let member = Member {
                    group: group.name.clone(),
                    actions: vec![launch.start(kind, warmed, now)],
                    launch: launch.clone(),
                    termination: termination.clone(),
                    pool: group.warm_pool.clone(),
                    terminated: None,
                };
                members.insert(instance.clone(), member);
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
            members: Mutex::new(members),
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

    /// Each instance's state and lifecycle actions as they stand now (timeouts applied).
    pub fn actions(&self) -> BTreeMap<String, ActionState> {
        self.shared.actions()
    }

    /// Sends an instance from its warm pool state into service: a new launch lifecycle
    /// action (`Pending:Wait`, the launch hook's heartbeat timeout); its `CONTINUE` puts it
    /// `InService`. An error (the reason) when the instance is not in a warm pool state.
    pub fn into_service(&self, instance_id: &str) -> Result<(), String> {
        self.shared.to_service(instance_id)
    }

    /// Terminates an instance: with a termination hook, a termination lifecycle action
    /// (`Terminating:Wait`, or `Warmed:Terminating:Wait` from the warm pool) that ends in
    /// `Terminating:Proceed` (`Warmed:Terminating:Proceed`); without one, straight to the
    /// latter. A launch action in progress ends (`ABANDON`, by `terminate`). An error (the
    /// reason) when the instance is unknown or already terminating.
    pub fn terminate(&self, instance_id: &str) -> Result<(), String> {
        self.shared.terminate(instance_id)
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
        lock(&self.members)
            .iter_mut()
            .filter_map(|(id, m)| {
                m.expire(now);
                let latest = m.actions.last()?;
                let state = ActionState {
                    group: m.group.clone(),
                    hook: latest.hook.clone(),
                    heartbeats: latest.heartbeats,
                    outcome: latest.outcome.clone(),
                    state: m.state(),
                    kind: latest.kind.name().into(),
                    actions: m.actions.iter().map(Action::record).collect(),
                };
                Some((id.clone(), state))
            })
            .collect()
    }

    fn to_service(&self, id: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut members = lock(&self.members);
        let m = members
            .get_mut(id)
            .ok_or_else(|| format!("instance {id} is in no group"))?;
        m.expire(now);
        let state = m.state();
        if !WARM_POOL_STATES.contains(&state.as_str()) {
            return Err(format!(
                "instance {id} is {state}, not in a warm pool state ({})",
                WARM_POOL_STATES.join(", ")
            ));
        }
        let action = m.launch.start(Kind::Launch, false, now);
        m.actions.push(action);
        Ok(())
    }

    fn terminate(&self, id: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut members = lock(&self.members);
        let m = members
            .get_mut(id)
            .ok_or_else(|| format!("instance {id} is in no group"))?;
        m.expire(now);
        let state = m.state();
        if state.contains("Terminat") {
            return Err(format!("instance {id} is already {state}"));
        }
        let warmed = state.starts_with("Warmed:");
        if let Some(a) = m.actions.last_mut().filter(|a| a.outcome.is_none()) {
            a.end("ABANDON".into(), "terminate", now);
        }
        match m.termination.clone() {
            Some(hook) => m.actions.push(hook.start(Kind::Termination, warmed, now)),
            None if warmed => m.terminated = Some("Warmed:Terminating:Proceed"),
            None => m.terminated = Some("Terminating:Proceed"),
        }
        Ok(())
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
        ("POST", "into-service" | "terminate") => {
            let id = String::from_utf8_lossy(body).trim().to_string();
            let done = match what {
                "into-service" => shared.to_service(&id),
                _ => shared.terminate(&id),
            };
            match done {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(why) => (StatusCode::CONFLICT, why + "\n").into_response(),
            }
        }
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
            let mut members = lock(&shared.members);
            let no_action = || {
                (
                    "ValidationError",
                    format!("No active Lifecycle Action found with instance ID {instance}"),
                )
            };
            let m = members.get_mut(instance).ok_or_else(no_action)?;
            m.expire(now);
            if m.group != group {
                return Err(no_action());
            }
            let Some(a) = m.waiting(hook) else {
                // A completion for an action that ended (or none under this hook waits).
                if result.is_some()
                    && let Some(ended) = m.actions.iter_mut().rev().find(|a| a.hook == hook)
                {
                    ended.refused += 1;
                }
                return Err(no_action());
            };
            match result {
                Some(result) => a.end(result, "complete", now),
                None => {
                    a.heartbeats += 1;
                    a.expires = now + a.heartbeat_timeout;
                }
            }
            Ok(String::new())
        }
        "DescribeAutoScalingInstances" => {
            let wanted = members(params, "InstanceIds");
            let mut members = lock(&shared.members);
            let mut xml = String::from("<AutoScalingInstances>");
            for (id, m) in members.iter_mut() {
                if !wanted.is_empty() && !wanted.contains(id) {
                    continue;
                }
                m.expire(now);
                xml += &format!(
                    "<member><InstanceId>{}</InstanceId><InstanceType>t3.micro</InstanceType><AutoScalingGroupName>{}</AutoScalingGroupName><AvailabilityZone>eu-west-1a</AvailabilityZone><LifecycleState>{}</LifecycleState><HealthStatus>HEALTHY</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>",
                    escape(id),
                    escape(&m.group),
                    escape(&m.state())
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
            let mut hooks = vec![(
                "autoscaling:EC2_INSTANCE_LAUNCHING",
                &g.hook,
                g.heartbeat_timeout,
                &g.default_result,
            )];
            if let Some(h) = &g.termination_hook {
                hooks.push((
                    "autoscaling:EC2_INSTANCE_TERMINATING",
                    &h.name,
                    h.heartbeat_timeout,
                    &h.default_result,
                ));
            }
            let mut xml = String::from("<LifecycleHooks>");
            for (transition, name, heartbeat, default_result) in hooks {
                if !names.is_empty() && !names.contains(name) {
                    continue;
                }
                let heartbeat = heartbeat.ceil() as u64;
                let global = (heartbeat * 100).min(MAX_GLOBAL_TIMEOUT.as_secs());
                xml += &format!(
                    "<member><LifecycleHookName>{}</LifecycleHookName><AutoScalingGroupName>{}</AutoScalingGroupName><LifecycleTransition>{transition}</LifecycleTransition><HeartbeatTimeout>{heartbeat}</HeartbeatTimeout><GlobalTimeout>{global}</GlobalTimeout><DefaultResult>{}</DefaultResult></member>",
                    escape(name),
                    escape(&g.name),
                    escape(default_result)
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
