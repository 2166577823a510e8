//! `bootstage.lifecycle` (or the image's `/etc/bootstage/lifecycle.json`): whom to tell
//! how the boot went (the Auto Scaling launch hook, a CloudFormation resource) and when.
//! `orchestrator` makes the calls. Messages name settings, never values beyond names.

use std::time::Duration;

use serde_json::Value;

use super::{SettingsError, known};

/// The hold when `hold_for` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(3600);
/// How long the watcher keeps an instance that has neither completed nor failed.
pub const DEFAULT_READY_WITHIN: Duration = Duration::from_secs(3600);
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

type Map = serde_json::Map<String, Value>;

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map, SettingsError> {
    value
        .as_object()
        .ok_or_else(|| SettingsError(format!("{at} must be an object")))
}

/// A name AWS takes (group, hook, stack, resource): 1–1600 characters, no control
/// characters. The message names the setting, not the value.
fn name(map: &Map, key: &str, at: &str, required: bool) -> Result<Option<String>, SettingsError> {
    match map.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(SettingsError(format!("{at}.{key} is required"))),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 1600 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(SettingsError(format!(
            "{at}.{key} must be a name of 1 to 1600 characters without control characters"
        ))),
    }
}

impl Config {
    /// Reads the settings; `origin` names where they came from in messages.
    pub fn from_value(value: &Value, origin: &str) -> Result<Config, SettingsError> {
        let map = object(value, origin)?;
        known(map, origin, &["asg", "cloudformation", "complete_on"])?;
        let complete_on = match map.get("complete_on") {
            None | Some(Value::Null) => CompleteOn::Target,
            Some(Value::String(s)) if s == "target" => CompleteOn::Target,
            Some(Value::String(s)) if s == "app" => CompleteOn::App,
            Some(_) => {
                return Err(SettingsError(format!(
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
                        return Err(SettingsError(format!(
                            "{at}.on_failure must be \"abandon\" or \"hold\""
                        )));
                    }
                };
                let duration = |key: &str, default: Duration| match asg.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => crate::base::duration::from_json(v)
                        .map_err(|why| SettingsError(format!("{at}.{key} is {why}"))),
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
            "bootstage.lifecycle.asgs: unknown setting; did you mean bootstage.lifecycle.asg? (known: asg, cloudformation, complete_on)"
        );
    }
}
