//! Telling the orchestrator how the boot went: the settings (`bootstage.lifecycle`) and the
//! calls to Auto Scaling (the launch lifecycle hook: heartbeats, CONTINUE, ABANDON; the
//! termination hook through [`LaunchHook::other`]; where the group has the instance) and
//! CloudFormation (`SignalResource`).
//!
//! Every call is bounded by the caller's deadline, throttling (Auto Scaling's
//! `ResourceContention` included) and transient failures are retried under
//! `base::retry::THROTTLED`, and "nothing is waiting for this" (the hook was
//! already completed or timed out, the instance is not in a lifecycle wait, the resource
//! was already signalled) is [`Delivery::NothingWaiting`], not an error: a second signal
//! is harmless. Errors name the call and the service's code, never a value of the settings
//! beyond the group, hook, stack and resource names.

use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::{self, Aws, Failure, Kind};
use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::{self, Deadline};
use crate::settings::SettingsError;
pub use crate::settings::lifecycle::{AsgConfig, CfnConfig, CompleteOn, Config, OnFailure};

/// The shortest heartbeat timeout a hook may have.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// AWS's cap on a lifecycle action, whatever its heartbeats.
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// The tag EC2 Auto Scaling puts on its instances.
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Config(#[from] SettingsError),
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

/// What a signal came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The service had nothing waiting for it; what it said.
    NothingWaiting(String),
}

/// `ValidationError` answers that mean "nothing is waiting for this signal".
/// AWS gives them no code of their own, so the message tells them from another
/// `ValidationError` (a group or hook that does not exist): Auto Scaling's "No active
/// Lifecycle Action found with instance ID …", CloudFormation's "Stack arn:… is in
/// CREATE_COMPLETE state and cannot be signaled".
fn nothing_waiting(f: &Failure) -> bool {
    f.kind == Kind::Permanent
        && f.is(&["ValidationError"])
        && (f.message.contains("No active Lifecycle Action")
            || f.message.contains("cannot be signaled"))
}

/// Whether a launch action can be waiting in this LifecycleState: `false` only for the
/// states an instance reaches once its launch actions are complete (in service, in the
/// warm pool, on standby, leaving), so a boot in such a state (a reboot in the pool, a
/// reboot in service) sends no second CONTINUE. Any other state, a state the group does
/// not know, or none at all, and the completion is sent: "No active Lifecycle Action" is
/// harmless, a missing completion keeps the group waiting.
pub fn launch_may_wait(state: Option<&str>) -> bool {
    !matches!(
        state,
        Some(
            "InService"
                | "Standby"
                | "Warmed:Stopped"
                | "Warmed:Running"
                | "Warmed:Hibernated"
                | "Detached"
                | "Terminating"
                | "Terminating:Wait"
                | "Terminating:Proceed"
                | "Terminated"
                | "Warmed:Terminating"
                | "Warmed:Terminating:Wait"
                | "Warmed:Terminating:Proceed"
                | "Warmed:Terminated"
        )
    )
}

/// One call to `service`, retried while throttled or failing transiently (`aws::call`).
async fn call<T, E, F, Fut>(
    service: &'static str,
    action: &'static str,
    deadline: Deadline,
    op: F,
) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let name = format!("{service} {action}");
    aws::call(service, &name, retry::THROTTLED, deadline, op).await
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
#[derive(Clone)]
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
            // The launch hook; a group with only a termination hook is reached through
            // it all the same (the drain takes `other`), and the launch steps skip it.
            hook: config
                .hook
                .clone()
                .or_else(|| config.termination_hook.clone())
                .unwrap_or_default(),
            instance_id: instance_id.to_string(),
        }))
    }

    /// Another hook of the same group, for the same instance (the termination hook).
    pub fn other(&self, hook: &str) -> LaunchHook {
        LaunchHook {
            client: self.client.clone(),
            group: self.group.clone(),
            hook: hook.to_string(),
            instance_id: self.instance_id.clone(),
        }
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
                OrchestratorError::Config(SettingsError(format!(
                    "bootstage.lifecycle.asg.hook: group {} has no lifecycle hook {}",
                    self.group, self.hook
                )))
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

    /// Where the group has the instance (`DescribeAutoScalingInstances`' LifecycleState:
    /// `Pending:Wait`, `Warmed:Pending:Wait`, `InService`, `Warmed:Stopped` …); `None` when
    /// the group does not list it.
    pub async fn lifecycle_state(
        &self,
        deadline: Deadline,
    ) -> Result<Option<String>, OrchestratorError> {
        let answer = call(
            "Auto Scaling",
            "DescribeAutoScalingInstances",
            deadline,
            || {
                self.client
                    .describe_auto_scaling_instances()
                    .instance_ids(&self.instance_id)
                    .send()
            },
        )
        .await
        .map_err(|f| {
            OrchestratorError::Undelivered(format!(
                "Auto Scaling DescribeAutoScalingInstances: {}",
                f.why()
            ))
        })?;
        Ok(answer
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(self.instance_id.as_str()))
            .and_then(|i| i.lifecycle_state())
            .map(str::to_string))
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

    #[test]
    fn only_nothing_waiting_answers_are_harmless() {
        let said = |kind, code, message: &str| Failure::new(kind, Some(code), message);
        let validation = "ValidationError";
        for (failure, waiting) in [
            (
                said(
                    Kind::Permanent,
                    validation,
                    "ValidationError: No active Lifecycle Action found with instance ID i-1",
                ),
                true,
            ),
            (
                said(
                    Kind::Permanent,
                    validation,
                    "ValidationError: Stack arn:aws:cloudformation:eu-west-1:1:stack/web/1 is in CREATE_COMPLETE state and cannot be signaled",
                ),
                true,
            ),
            (
                said(Kind::Refused, "AccessDenied", "AccessDenied: no"),
                false,
            ),
            (
                said(
                    Kind::Permanent,
                    validation,
                    "ValidationError: Group x not found",
                ),
                false,
            ),
            // The words alone, under another code, are not the answer.
            (
                said(
                    Kind::Permanent,
                    "InternalFailure",
                    "No active Lifecycle Action",
                ),
                false,
            ),
        ] {
            assert_eq!(nothing_waiting(&failure), waiting, "{failure:?}");
        }
    }

    #[test]
    fn a_launch_action_may_wait_unless_the_instance_is_past_its_launch() {
        for (state, may_wait) in [
            (None, true),
            (Some("Pending"), true),
            (Some("Pending:Wait"), true),
            (Some("Pending:Proceed"), true),
            (Some("Warmed:Pending"), true),
            (Some("Warmed:Pending:Wait"), true),
            (Some("Quarantined"), true),
            (Some("InService"), false),
            (Some("Standby"), false),
            (Some("Warmed:Stopped"), false),
            (Some("Warmed:Running"), false),
            (Some("Warmed:Hibernated"), false),
            (Some("Detached"), false),
            (Some("Terminating:Wait"), false),
            (Some("Warmed:Terminating:Wait"), false),
            (Some("Warmed:Terminated"), false),
        ] {
            assert_eq!(launch_may_wait(state), may_wait, "{state:?}");
        }
    }
}
