//! Telling the orchestrator how the boot went: the settings (`bootstage.lifecycle`) and the
//! calls to Auto Scaling (the launch lifecycle hook: heartbeats, CONTINUE, ABANDON) and
//! CloudFormation (`SignalResource`).
//!
//! Every call is bounded by the caller's deadline, throttling and transient failures are
//! retried under `base::retry::THROTTLED`, and "nothing is waiting for this" (the hook was
//! already completed or timed out, the instance is not in a lifecycle wait, the resource
//! was already signalled) is [`Delivery::NothingWaiting`], not an error: a second signal
//! is harmless. Errors name the call and the service's code, never a value of the settings
//! beyond the group, hook, stack and resource names.

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde_json::Value;

use crate::aws::{self, Aws, Failure};
use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::{self, Deadline};

/// The hold when `hold_for` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(3600);
/// How long the watcher keeps an instance that has neither completed nor failed.
pub const DEFAULT_READY_WITHIN: Duration = Duration::from_secs(3600);
/// The shortest heartbeat timeout a hook may have.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// AWS's cap on a lifecycle action, whatever its heartbeats.
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// The tag EC2 Auto Scaling puts on its instances.
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Tell the group at once: it replaces the instance.
    Abandon,
    /// Keep the instance (heartbeating) for debugging, then abandon.
    Hold,
}

/// When the success signals go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteOn {
    /// When `bootstage.target` is reached (the ready unit).
    Target,
    /// When the app runs `bootstage lifecycle complete` after its own readiness check.
    App,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsgConfig {
    pub hook: String,
    /// Else the instance's `aws:autoscaling:groupName` tag, else DescribeAutoScalingInstances.
    pub group: Option<String>,
    pub on_failure: OnFailure,
    pub hold_for: Duration,
    /// No completion within this long after the watcher starts: abandon (an app that
    /// never said it was ready, an app unit that failed without `OnFailure=`).
    pub ready_within: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfnConfig {
    pub stack: String,
    pub resource: String,
    pub region: Option<String>,
}

/// `bootstage.lifecycle`, or the image's `/etc/bootstage/lifecycle.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub asg: Option<AsgConfig>,
    pub cloudformation: Option<CfnConfig>,
    pub complete_on: CompleteOn,
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Undelivered(String),
}

impl ExitStatus for OrchestratorError {
    fn exit_code(&self) -> ExitCode {
        match self {
            OrchestratorError::Config(_) => ExitCode::BadUserData,
            OrchestratorError::Undelivered(_) => ExitCode::TempFail,
        }
    }
}

type Map = serde_json::Map<String, Value>;

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map, OrchestratorError> {
    value
        .as_object()
        .ok_or_else(|| OrchestratorError::Config(format!("{at} must be an object")))
}

/// A name AWS takes (group, hook, stack, resource): 1–1600 characters, no control
/// characters. The message names the setting, not the value.
fn name(
    map: &Map,
    key: &str,
    at: &str,
    required: bool,
) -> Result<Option<String>, OrchestratorError> {
    match map.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => {
            Err(OrchestratorError::Config(format!("{at}.{key} is required")))
        }
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 1600 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(OrchestratorError::Config(format!(
            "{at}.{key} must be a name of 1 to 1600 characters without control characters"
        ))),
    }
}

fn known(map: &Map, at: &str, keys: &[&str]) -> Result<(), OrchestratorError> {
    match map.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(other) => Err(OrchestratorError::Config(format!(
            "{at}: unknown setting {other:?} (known: {})",
            keys.join(", ")
        ))),
        None => Ok(()),
    }
}

impl Config {
    /// Reads the settings; `origin` names where they came from in messages.
    pub fn from_value(value: &Value, origin: &str) -> Result<Config, OrchestratorError> {
        let map = object(value, origin)?;
        known(map, origin, &["asg", "cloudformation", "complete_on"])?;
        let complete_on = match map.get("complete_on") {
            None | Some(Value::Null) => CompleteOn::Target,
            Some(Value::String(s)) if s == "target" => CompleteOn::Target,
            Some(Value::String(s)) if s == "app" => CompleteOn::App,
            Some(_) => {
                return Err(OrchestratorError::Config(format!(
                    "{origin}.complete_on must be \"target\" or \"app\""
                )));
            }
        };
        let asg = match map.get("asg") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let at = format!("{origin}.asg");
                let asg = object(value, &at)?;
                known(
                    asg,
                    &at,
                    &["hook", "group", "on_failure", "hold_for", "ready_within"],
                )?;
                let on_failure = match asg.get("on_failure") {
                    None | Some(Value::Null) => OnFailure::Abandon,
                    Some(Value::String(s)) if s == "abandon" => OnFailure::Abandon,
                    Some(Value::String(s)) if s == "hold" => OnFailure::Hold,
                    Some(_) => {
                        return Err(OrchestratorError::Config(format!(
                            "{at}.on_failure must be \"abandon\" or \"hold\""
                        )));
                    }
                };
                let duration = |key: &str, default: Duration| match asg.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => crate::base::duration::from_json(v)
                        .map_err(|why| OrchestratorError::Config(format!("{at}.{key} is {why}"))),
                };
                let hold_for = duration("hold_for", DEFAULT_HOLD)?;
                let ready_within = duration("ready_within", DEFAULT_READY_WITHIN)?;
                Some(AsgConfig {
                    hook: name(asg, "hook", &at, true)?.unwrap_or_default(),
                    group: name(asg, "group", &at, false)?,
                    on_failure,
                    hold_for,
                    ready_within,
                })
            }
        };
        let cloudformation = match map.get("cloudformation") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let at = format!("{origin}.cloudformation");
                let cfn = object(value, &at)?;
                known(cfn, &at, &["stack", "resource", "region"])?;
                Some(CfnConfig {
                    stack: name(cfn, "stack", &at, true)?.unwrap_or_default(),
                    resource: name(cfn, "resource", &at, true)?.unwrap_or_default(),
                    region: name(cfn, "region", &at, false)?,
                })
            }
        };
        Ok(Config {
            asg,
            cloudformation,
            complete_on,
        })
    }
}

/// What a signal came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The service had nothing waiting for it; what it said.
    NothingWaiting(String),
}

/// One API call, retried while throttled or failing transiently, each attempt and the
/// whole bounded by `deadline`. `service.action` names it in logs and errors.
async fn call<T, E, F, Fut>(
    service: &'static str,
    action: &'static str,
    deadline: Deadline,
    mut op: F,
) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let attempt = || {
        let sent = op();
        async move {
            match tokio::time::timeout(deadline.remaining(), sent).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(aws::classify(service, &e)),
                Err(_) => Err(Failure::Transient("timed out".into())),
            }
        }
    };
    retry::until_deadline(
        retry::THROTTLED,
        deadline,
        |e: &Failure, attempt, sleep| {
            tracing::warn!(
                attempt,
                "{service} {action}: {}; retrying in {sleep:?}",
                e.why()
            )
        },
        attempt,
    )
    .await
}

/// `ValidationError` answers that mean "nothing is waiting for this signal".
fn nothing_waiting(f: &Failure) -> bool {
    let Failure::Permanent(why) = f else {
        return false;
    };
    why.contains("No active Lifecycle Action") || why.contains("cannot be signaled")
}

fn delivery(
    service: &'static str,
    action: &'static str,
    result: Result<(), Failure>,
) -> Result<Delivery, OrchestratorError> {
    match result {
        Ok(()) => Ok(Delivery::Delivered),
        Err(f) if nothing_waiting(&f) => Ok(Delivery::NothingWaiting(f.why().to_string())),
        Err(f) => Err(OrchestratorError::Undelivered(format!(
            "{service} {action}: {}",
            f.why()
        ))),
    }
}

/// The launch lifecycle hook of one instance.
pub struct LaunchHook {
    client: aws_sdk_autoscaling::Client,
    pub group: String,
    pub hook: String,
    pub instance_id: String,
}

impl LaunchHook {
    /// `group` given, or found: from the instance's tag if the caller has it, else
    /// DescribeAutoScalingInstances. `None` when the instance is in no group (the same
    /// image launched on its own): nothing to tell.
    pub async fn new(
        aws: &Aws,
        config: &AsgConfig,
        instance_id: &str,
        group_tag: Option<&str>,
        deadline: Deadline,
    ) -> Result<Option<LaunchHook>, OrchestratorError> {
        let client = aws.autoscaling();
        // A tag is anyone's with ec2:CreateTags: one that is no group name is not used
        // (nor logged).
        let group_tag = group_tag.filter(|tag| {
            let fits = !tag.is_empty() && tag.len() <= 255 && !tag.chars().any(char::is_control);
            if !fits {
                tracing::warn!("the instance's {GROUP_TAG} tag is not a group name; asking Auto Scaling instead");
            }
            fits
        });
        let group = match (&config.group, group_tag) {
            (Some(group), _) => group.clone(),
            (None, Some(tag)) => {
                tracing::info!(
                    group = tag,
                    "auto scaling group from the instance's {GROUP_TAG} tag"
                );
                tag.to_string()
            }
            (None, None) => {
                let answer = call(
                    "Auto Scaling",
                    "DescribeAutoScalingInstances",
                    deadline,
                    || {
                        client
                            .describe_auto_scaling_instances()
                            .instance_ids(instance_id)
                            .send()
                    },
                )
                .await
                .map_err(|f| {
                    OrchestratorError::Undelivered(format!(
                        "cannot find this instance's auto scaling group (DescribeAutoScalingInstances: {})",
                        f.why()
                    ))
                })?;
                let found = answer
                    .auto_scaling_instances()
                    .iter()
                    .find(|i| i.instance_id() == Some(instance_id))
                    .and_then(|i| i.auto_scaling_group_name())
                    .map(str::to_string);
                let Some(group) = found else {
                    tracing::info!(
                        "instance {instance_id} is in no auto scaling group (DescribeAutoScalingInstances): no lifecycle hook to tell"
                    );
                    return Ok(None);
                };
                tracing::info!(
                    group,
                    "auto scaling group from DescribeAutoScalingInstances"
                );
                group
            }
        };
        Ok(Some(LaunchHook {
            client,
            group,
            hook: config.hook.clone(),
            instance_id: instance_id.to_string(),
        }))
    }

    /// The hook's heartbeat timeout (DescribeLifecycleHooks).
    pub async fn heartbeat_timeout(
        &self,
        deadline: Deadline,
    ) -> Result<Duration, OrchestratorError> {
        let answer = call("Auto Scaling", "DescribeLifecycleHooks", deadline, || {
            self.client
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&self.group)
                .lifecycle_hook_names(&self.hook)
                .send()
        })
        .await
        .map_err(|f| {
            OrchestratorError::Undelivered(format!(
                "Auto Scaling DescribeLifecycleHooks: {}",
                f.why()
            ))
        })?;
        answer
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_hook_name() == Some(self.hook.as_str()))
            .and_then(|h| h.heartbeat_timeout())
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64))
            .ok_or_else(|| {
                OrchestratorError::Config(format!(
                    "bootstage.lifecycle.asg.hook: group {} has no lifecycle hook {}",
                    self.group, self.hook
                ))
            })
    }

    pub async fn heartbeat(&self, deadline: Deadline) -> Result<Delivery, OrchestratorError> {
        let result = call(
            "Auto Scaling",
            "RecordLifecycleActionHeartbeat",
            deadline,
            || {
                self.client
                    .record_lifecycle_action_heartbeat()
                    .auto_scaling_group_name(&self.group)
                    .lifecycle_hook_name(&self.hook)
                    .instance_id(&self.instance_id)
                    .send()
            },
        )
        .await
        .map(drop);
        delivery("Auto Scaling", "RecordLifecycleActionHeartbeat", result)
    }

    /// `CompleteLifecycleAction` with `CONTINUE` (true) or `ABANDON`.
    pub async fn complete(
        &self,
        proceed: bool,
        deadline: Deadline,
    ) -> Result<Delivery, OrchestratorError> {
        let result = call("Auto Scaling", "CompleteLifecycleAction", deadline, || {
            self.client
                .complete_lifecycle_action()
                .auto_scaling_group_name(&self.group)
                .lifecycle_hook_name(&self.hook)
                .instance_id(&self.instance_id)
                .lifecycle_action_result(if proceed { "CONTINUE" } else { "ABANDON" })
                .send()
        })
        .await
        .map(drop);
        delivery("Auto Scaling", "CompleteLifecycleAction", result)
    }
}

/// `SignalResource` for one stack's resource, the instance id as `UniqueId`.
pub async fn signal_resource(
    aws: &Aws,
    config: &CfnConfig,
    instance_id: &str,
    success: bool,
    deadline: Deadline,
) -> Result<Delivery, OrchestratorError> {
    use aws_sdk_cloudformation::types::ResourceSignalStatus;
    let client = aws.cloudformation(config.region.as_deref());
    let status = match success {
        true => ResourceSignalStatus::Success,
        false => ResourceSignalStatus::Failure,
    };
    let result = call("CloudFormation", "SignalResource", deadline, || {
        client
            .signal_resource()
            .stack_name(&config.stack)
            .logical_resource_id(&config.resource)
            .unique_id(instance_id)
            .status(status.clone())
            .send()
    })
    .await
    .map(drop);
    delivery("CloudFormation", "SignalResource", result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_are_read_and_checked_by_name() {
        let config = Config::from_value(
            &json!({"asg": {"hook": "launch", "on_failure": "hold", "hold_for": "2h"},
                    "cloudformation": {"stack": "web", "resource": "Group"}}),
            "bootstage.lifecycle",
        )
        .unwrap();
        assert_eq!(
            config.asg,
            Some(AsgConfig {
                hook: "launch".into(),
                group: None,
                on_failure: OnFailure::Hold,
                hold_for: Duration::from_secs(7200),
                ready_within: DEFAULT_READY_WITHIN,
            })
        );
        assert_eq!(config.complete_on, CompleteOn::Target);
        let err = |v: Value| {
            Config::from_value(&v, "bootstage.lifecycle")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(json!({"asg": {}})),
            "bootstage.lifecycle.asg.hook is required"
        );
        assert_eq!(
            err(json!({"asg": {"hook": "h", "on_failure": "retry"}})),
            "bootstage.lifecycle.asg.on_failure must be \"abandon\" or \"hold\""
        );
        assert_eq!(
            err(json!({"asg": {"hook": "secret\nvalue"}})),
            "bootstage.lifecycle.asg.hook must be a name of 1 to 1600 characters without control characters"
        );
        assert_eq!(
            err(json!({"cloudformation": {"stack": "s"}})),
            "bootstage.lifecycle.cloudformation.resource is required"
        );
        assert_eq!(
            err(json!({"asgs": {}})),
            "bootstage.lifecycle: unknown setting \"asgs\" (known: asg, cloudformation, complete_on)"
        );
    }

    #[test]
    fn only_nothing_waiting_answers_are_harmless() {
        assert!(nothing_waiting(&Failure::Permanent(
            "ValidationError: No active Lifecycle Action found with instance ID i-1".into()
        )));
        assert!(nothing_waiting(&Failure::Permanent(
            "ValidationError: Resource G is in CREATE_COMPLETE state and cannot be signaled".into()
        )));
        assert!(!nothing_waiting(&Failure::Refused(
            "AccessDenied: no".into()
        )));
        assert!(!nothing_waiting(&Failure::Permanent(
            "ValidationError: Group x not found".into()
        )));
    }
}
