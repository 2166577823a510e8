//! `bootstage.lifecycle` (or the image's `/etc/bootstage/lifecycle.json`): whom to tell
//! how the boot went (the Auto Scaling launch hook, a CloudFormation resource) and when,
//! and how the instance leaves (`asg.termination_hook`, `drain`: which units to stop, and
//! how long a drain may take). `orchestrator` makes the calls. Messages name settings,
//! never values beyond names.

use std::time::Duration;

use serde_json::Value;

use super::{SettingsError, known};

/// The hold when `hold_for` is not given.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(3600);
/// How long the watcher keeps an instance that has neither completed nor failed.
pub const DEFAULT_READY_WITHIN: Duration = Duration::from_secs(3600);
/// How long a drain may take (`drain.within`), unless a Spot notice leaves less.
pub const DEFAULT_DRAIN_WITHIN: Duration = Duration::from_secs(300);
/// How long before a Spot interruption's `time` a drain must be over (`drain.spot_margin`).
pub const DEFAULT_SPOT_MARGIN: Duration = Duration::from_secs(10);
/// How long after a rebalance recommendation with no interruption `rebalance-undo.d` runs.
pub const DEFAULT_REBALANCE_UNDO_AFTER: Duration = Duration::from_secs(600);
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
    /// The launch lifecycle hook; `None` for a group with only a termination hook (the
    /// boot then tells the group nothing; the watcher drains).
    pub hook: Option<String>,
    /// Else the instance's `aws:autoscaling:groupName` tag, else DescribeAutoScalingInstances.
    pub group: Option<String>,
    pub on_failure: OnFailure,
    pub hold_for: Duration,
    /// No completion within this long after the watcher starts: abandon (an app that
    /// never said it was ready, an app unit that failed without `OnFailure=`).
    pub ready_within: Duration,
    /// The group's termination lifecycle hook: heartbeated while the instance drains,
    /// then completed with CONTINUE once it waits in `Terminating:Wait`.
    pub termination_hook: Option<String>,
}

/// `bootstage.lifecycle.drain`: what leaving takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// Units to `systemctl stop`, in this order, after `drain.d`.
    pub stop: Vec<String>,
    /// The longest a drain may take (hooks and stops together).
    pub within: Duration,
    /// A Spot drain ends this long before the interruption's `time`.
    pub spot_margin: Duration,
    /// `rebalance-undo.d` runs when no interruption followed a rebalance
    /// recommendation within this long.
    pub rebalance_undo_after: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            stop: Vec::new(),
            within: DEFAULT_DRAIN_WITHIN,
            spot_margin: DEFAULT_SPOT_MARGIN,
            rebalance_undo_after: DEFAULT_REBALANCE_UNDO_AFTER,
        }
    }
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
    /// `None` when not given: the defaults apply.
    pub drain: Option<DrainConfig>,
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
        known(
            map,
            origin,
            &["asg", "cloudformation", "complete_on", "drain"],
        )?;
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
                    &[
                        "hook",
                        "group",
                        "on_failure",
                        "hold_for",
                        "ready_within",
                        "termination_hook",
                    ],
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
                let hold_for = duration(asg, "hold_for", &at, DEFAULT_HOLD)?;
                let ready_within = duration(asg, "ready_within", &at, DEFAULT_READY_WITHIN)?;
                let hook = name(asg, "hook", &at, false)?;
                let termination_hook = name(asg, "termination_hook", &at, false)?;
                if hook.is_none() && termination_hook.is_none() {
                    return Err(SettingsError(format!(
                        "{at} needs hook (the launch lifecycle hook), termination_hook, or both"
                    )));
                }
                Some(AsgConfig {
                    hook,
                    group: name(asg, "group", &at, false)?,
                    on_failure,
                    hold_for,
                    ready_within,
                    termination_hook,
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
        let drain = match map.get("drain") {
            None | Some(Value::Null) => None,
            Some(value) => Some(drain(value, &format!("{origin}.drain"))?),
        };
        Ok(Config {
            asg,
            cloudformation,
            complete_on,
            drain,
        })
    }

    /// The drain settings given, else the defaults.
    pub fn drain(&self) -> DrainConfig {
        self.drain.clone().unwrap_or_default()
    }

    /// Whether the instance's leaving has anything to act on in these settings: a
    /// termination hook to complete, or units to stop.
    pub fn watches_leaving(&self) -> bool {
        self.asg
            .as_ref()
            .is_some_and(|a| a.termination_hook.is_some())
            || self.drain.as_ref().is_some_and(|d| !d.stop.is_empty())
    }
}

/// A duration setting (`base::duration`: a bare number is seconds), or its default.
fn duration(map: &Map, key: &str, at: &str, default: Duration) -> Result<Duration, SettingsError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => crate::base::duration::from_json(v)
            .map_err(|why| SettingsError(format!("{at}.{key} is {why}"))),
    }
}

/// [`duration`], at most `max`: a drain's times become wall-clock deadlines, and a
/// thousand-year one would overflow them.
fn bounded(
    map: &Map,
    key: &str,
    at: &str,
    default: Duration,
    max: Duration,
) -> Result<Duration, SettingsError> {
    let value = duration(map, key, at, default)?;
    match value > max {
        true => Err(SettingsError(format!(
            "{at}.{key} is longer than {}",
            humantime::format_duration(max)
        ))),
        false => Ok(value),
    }
}

/// `bootstage.lifecycle.drain`.
fn drain(value: &Value, at: &str) -> Result<DrainConfig, SettingsError> {
    let map = object(value, at)?;
    known(
        map,
        at,
        &["stop", "within", "spot_margin", "rebalance_undo_after"],
    )?;
    let stop = match map.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(units)) => units
            .iter()
            .enumerate()
            .map(|(i, unit)| match unit {
                Value::String(u) if u == "bootstage-lifecycle.service" => Err(SettingsError(
                    format!("{at}.stop[{i}] is the unit that drains: it cannot stop itself"),
                )),
                Value::String(u) => unit_name(u).map(|()| u.clone()).map_err(|why| {
                    SettingsError(format!("{at}.stop[{i}] is not a unit name: {why}"))
                }),
                _ => Err(SettingsError(format!(
                    "{at}.stop[{i}] must be a unit name (a string such as \"myapp.service\")"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(SettingsError(format!(
                "{at}.stop must be a list of unit names, e.g. [\"myapp.service\"]"
            )));
        }
    };
    const HOUR: Duration = Duration::from_secs(3600);
    // No lifecycle action outlives 48 h, so no drain needs longer.
    let within = bounded(map, "within", at, DEFAULT_DRAIN_WITHIN, 48 * HOUR)?;
    if within.is_zero() {
        return Err(SettingsError(format!(
            "{at}.within must be longer than 0 s"
        )));
    }
    Ok(DrainConfig {
        stop,
        within,
        spot_margin: bounded(map, "spot_margin", at, DEFAULT_SPOT_MARGIN, HOUR)?,
        rebalance_undo_after: bounded(
            map,
            "rebalance_undo_after",
            at,
            DEFAULT_REBALANCE_UNDO_AFTER,
            7 * 24 * HOUR,
        )?,
    })
}

/// Unit suffixes `systemctl stop` takes.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
    ".device",
];

/// A unit name as systemd's `unit_name_is_valid` takes it: at most 255 characters of
/// `[A-Za-z0-9:_.\@-]`, a name before the suffix, at most one `@` (an instance), a known
/// suffix; and never a leading `-` (systemctl would read an option). Why not, without the
/// name (it is user-data).
fn unit_name(unit: &str) -> Result<(), String> {
    if unit.is_empty() || unit.len() > 255 {
        return Err("a unit name has 1 to 255 characters".into());
    }
    if unit.starts_with('-') {
        return Err("a unit name cannot start with -".into());
    }
    if let Some(c) = unit
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_.\\@-".contains(*c)))
    {
        return Err(match c.is_control() || c.is_whitespace() {
            true => "it holds a space or a control character".into(),
            false => format!("{c:?} is not allowed in a unit name"),
        });
    }
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| unit.ends_with(*s)) else {
        return Err("it needs a unit type suffix, e.g. .service".into());
    };
    let stem = &unit[..unit.len() - suffix.len()];
    if stem.is_empty() || stem.starts_with('@') || stem.matches('@').count() > 1 {
        return Err("it needs a name before the suffix, and at most one @".into());
    }
    Ok(())
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
                hook: Some("launch".into()),
                group: None,
                on_failure: OnFailure::Hold,
                hold_for: Duration::from_secs(7200),
                ready_within: DEFAULT_READY_WITHIN,
                termination_hook: None,
            })
        );
        assert_eq!(config.drain, None);
        assert_eq!(config.drain(), DrainConfig::default());
        assert!(!config.watches_leaving());
        assert_eq!(config.complete_on, CompleteOn::Target);
        let err = |v: Value| {
            Config::from_value(&v, "bootstage.lifecycle")
                .unwrap_err()
                .to_string()
        };
        // A group with only a termination hook.
        let only_leaving = Config::from_value(
            &json!({"asg": {"termination_hook": "leave"}}),
            "bootstage.lifecycle",
        )
        .unwrap()
        .asg
        .unwrap();
        assert_eq!(
            (only_leaving.hook, only_leaving.termination_hook.as_deref()),
            (None, Some("leave"))
        );
        assert_eq!(
            err(json!({"asg": {}})),
            "bootstage.lifecycle.asg needs hook (the launch lifecycle hook), termination_hook, or both"
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
            "bootstage.lifecycle.asgs: unknown setting; did you mean bootstage.lifecycle.asg? (known: asg, cloudformation, complete_on, drain)"
        );
    }

    #[test]
    fn drain_settings_are_read_with_defaults_and_checked() {
        let config = Config::from_value(
            &json!({"asg": {"hook": "launch", "termination_hook": "leave"},
                    "drain": {"stop": ["myapp.service", "worker@1.service", "web.socket"],
                              "within": 90, "spot_margin": "15s",
                              "rebalance_undo_after": "2min"}}),
            "bootstage.lifecycle",
        )
        .unwrap();
        assert_eq!(
            config.asg.as_ref().unwrap().termination_hook.as_deref(),
            Some("leave")
        );
        assert_eq!(
            config.drain(),
            DrainConfig {
                stop: vec![
                    "myapp.service".into(),
                    "worker@1.service".into(),
                    "web.socket".into()
                ],
                within: Duration::from_secs(90),
                spot_margin: Duration::from_secs(15),
                rebalance_undo_after: Duration::from_secs(120),
            }
        );
        assert!(config.watches_leaving());
        let defaults = Config::from_value(&json!({"drain": {}}), "x").unwrap();
        assert_eq!(defaults.drain(), DrainConfig::default());
        assert_eq!(
            DrainConfig::default().within,
            Duration::from_secs(300),
            "the README's default"
        );
        let err = |v: Value| {
            Config::from_value(&v, "bootstage.lifecycle")
                .unwrap_err()
                .to_string()
        };
        let cases = [
            (
                json!({"drain": {"stops": []}}),
                "bootstage.lifecycle.drain.stops: unknown setting; did you mean bootstage.lifecycle.drain.stop? (known: stop, within, spot_margin, rebalance_undo_after)",
            ),
            (
                json!({"asg": {"hook": "h", "termination-hook": "t"}}),
                "bootstage.lifecycle.asg.termination-hook: unknown setting; did you mean bootstage.lifecycle.asg.termination_hook? (known: hook, group, on_failure, hold_for, ready_within, termination_hook)",
            ),
            (
                json!({"drain": {"stop": "myapp.service"}}),
                "bootstage.lifecycle.drain.stop must be a list of unit names, e.g. [\"myapp.service\"]",
            ),
            (
                json!({"drain": {"stop": [3]}}),
                "bootstage.lifecycle.drain.stop[0] must be a unit name (a string such as \"myapp.service\")",
            ),
            (
                json!({"drain": {"stop": ["myapp"]}}),
                "bootstage.lifecycle.drain.stop[0] is not a unit name: it needs a unit type suffix, e.g. .service",
            ),
            (
                json!({"drain": {"stop": ["a.service", "--force.service"]}}),
                "bootstage.lifecycle.drain.stop[1] is not a unit name: a unit name cannot start with -",
            ),
            (
                json!({"drain": {"stop": ["my app.service"]}}),
                "bootstage.lifecycle.drain.stop[0] is not a unit name: it holds a space or a control character",
            ),
            (
                json!({"drain": {"stop": ["app;rm.service"]}}),
                "bootstage.lifecycle.drain.stop[0] is not a unit name: ';' is not allowed in a unit name",
            ),
            (
                json!({"drain": {"stop": [".service"]}}),
                "bootstage.lifecycle.drain.stop[0] is not a unit name: it needs a name before the suffix, and at most one @",
            ),
            (
                json!({"drain": {"stop": ["bootstage-lifecycle.service"]}}),
                "bootstage.lifecycle.drain.stop[0] is the unit that drains: it cannot stop itself",
            ),
            (
                json!({"drain": {"within": "soon"}}),
                "bootstage.lifecycle.drain.within is not a duration; use seconds (120) or a duration with a unit (90s, 2min, 1h30m)",
            ),
            (
                json!({"drain": {"within": 0}}),
                "bootstage.lifecycle.drain.within must be longer than 0 s",
            ),
            (
                json!({"drain": {"within": "300000y"}}),
                "bootstage.lifecycle.drain.within is longer than 2days",
            ),
            (
                json!({"drain": {"spot_margin": "2h"}}),
                "bootstage.lifecycle.drain.spot_margin is longer than 1h",
            ),
            (
                json!({"drain": {"rebalance_undo_after": "8d"}}),
                "bootstage.lifecycle.drain.rebalance_undo_after is longer than 7days",
            ),
            (
                json!({"drain": {"spot_margin": "-5s"}}),
                "bootstage.lifecycle.drain.spot_margin is a duration cannot be negative; use seconds (120) or a duration with a unit (90s, 2min, 1h30m)",
            ),
            (
                json!({"drain": []}),
                "bootstage.lifecycle.drain must be an object",
            ),
            (
                json!({"asg": {"hook": "h", "termination_hook": ""}}),
                "bootstage.lifecycle.asg.termination_hook must be a name of 1 to 1600 characters without control characters",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(err(value.clone()), message, "{value}");
        }
    }
}
