//! The boot's metrics as one CloudWatch embedded metric format document (one line of
//! JSON), which CloudWatch Logs turns into metrics once the CloudWatch agent has shipped
//! the line: namespace `bootstage`, dimension `AutoScalingGroupName` when the group is
//! known (else none), `TimeToReady` (seconds from the instance's `pendingTime` to READY),
//! `<Stage>Duration` (seconds, each stage that ran) and `BootFailed` (0 on READY, 1 on
//! the failure notice: its average is the failure rate).
//!
//! The document follows AWS's specification: `_aws.Timestamp` (milliseconds since the
//! epoch), `_aws.CloudWatchMetrics` (one directive: `Namespace`, `Dimensions` (a list of
//! dimension sets, here one), `Metrics` (`Name`, `Unit`)); each name a member of the root
//! with a number, each dimension a member with a string. Nothing else is in it: no
//! value of a parameter, no instance id (a dimension per instance would be a metric per
//! instance).

use std::time::{Duration, SystemTime};

use serde_json::{Map, Number, Value, json};

pub const NAMESPACE: &str = "bootstage";
pub const GROUP_DIMENSION: &str = "AutoScalingGroupName";

/// A boot of another kind than the launch's own (a reboot, a start out of a warm pool)
/// began long after `pendingTime`: past this, `TimeToReady` would measure the instance's
/// age, so it is left out.
pub const LAUNCH_BOOT_WITHIN: Duration = Duration::from_secs(10 * 60);

/// What one boot's document says.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    pub at: SystemTime,
    pub group: Option<String>,
    pub time_to_ready: Option<Duration>,
    /// Each stage that ran, by its name (`metadata`, `s3-sync`, `hooks`), and how long.
    pub stages: Vec<(String, Duration)>,
    pub failed: bool,
}

/// `TimeToReady`: from `pending` (IMDS `pendingTime`) to `now`, when this boot is the
/// launch's own (it began within [`LAUNCH_BOOT_WITHIN`] of `pending`); `None` otherwise,
/// or when the clocks disagree.
pub fn time_to_ready(pending: SystemTime, booted: SystemTime, now: SystemTime) -> Option<Duration> {
    let boot_began = booted.duration_since(pending).unwrap_or(Duration::ZERO);
    if boot_began > LAUNCH_BOOT_WITHIN {
        return None;
    }
    now.duration_since(pending).ok()
}

/// A stage's metric name: `metadata` → `MetadataDuration`, `s3-sync` → `S3SyncDuration`.
pub fn stage_metric(stage: &str) -> String {
    let mut name = String::new();
    for word in stage.split(['-', '_']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name + "Duration"
}

fn seconds(d: Duration) -> Value {
    // Milliseconds are all a boot's timings carry.
    let ms = d.as_millis() as f64 / 1000.0;
    Number::from_f64(ms).map_or(Value::Null, Value::Number)
}

/// The document, as one line (no newline).
pub fn document(boot: &Boot) -> String {
    let timestamp = boot
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut metrics = Vec::new();
    let mut root = Map::new();
    let mut add = |name: String, unit: &str, value: Value, root: &mut Map<String, Value>| {
        metrics.push(json!({"Name": name, "Unit": unit}));
        root.insert(name, value);
    };
    let mut values = Map::new();
    if let Some(ttr) = boot.time_to_ready {
        add("TimeToReady".into(), "Seconds", seconds(ttr), &mut values);
    }
    for (stage, took) in &boot.stages {
        add(stage_metric(stage), "Seconds", seconds(*took), &mut values);
    }
    add(
        "BootFailed".into(),
        "Count",
        json!(u8::from(boot.failed)),
        &mut values,
    );
    let dimensions: Vec<&str> = boot
        .group
        .as_ref()
        .map(|_| GROUP_DIMENSION)
        .into_iter()
        .collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions],
                "Metrics": metrics,
            }],
        }),
    );
    if let Some(group) = &boot.group {
        root.insert(GROUP_DIMENSION.into(), json!(group));
    }
    root.extend(values);
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_765_000_000;

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn time_to_ready_only_for_the_launchs_own_boot() {
        let cases = [
            // pending, kernel booted, now → TimeToReady
            (
                at(T0, 0),
                at(T0 + 20, 0),
                at(T0 + 95, 250),
                Some(Duration::from_millis(95_250)),
            ),
            (
                at(T0, 0),
                at(T0 + 600, 0),
                at(T0 + 700, 0),
                Some(Duration::from_secs(700)),
            ),
            // A reboot a day later, a start out of a warm pool: the instance's age, not a boot.
            (at(T0, 0), at(T0 + 601, 0), at(T0 + 700, 0), None),
            (at(T0, 0), at(T0 + 86_400, 0), at(T0 + 86_460, 0), None),
            // The kernel's clock said it booted before pendingTime (skew): still the launch.
            (
                at(T0, 0),
                at(T0 - 2, 0),
                at(T0 + 30, 0),
                Some(Duration::from_secs(30)),
            ),
            // A clock that went back: nothing rather than nonsense.
            (at(T0, 0), at(T0, 0), at(T0 - 1, 0), None),
        ];
        for (pending, booted, now, want) in cases {
            assert_eq!(time_to_ready(pending, booted, now), want, "{now:?}");
        }
    }

    #[test]
    fn stage_names() {
        assert_eq!(stage_metric("metadata"), "MetadataDuration");
        assert_eq!(stage_metric("s3-sync"), "S3SyncDuration");
        assert_eq!(stage_metric("hooks"), "HooksDuration");
    }

    #[test]
    fn a_ready_boot_in_a_group() {
        let boot = Boot {
            at: at(T0, 123),
            group: Some("web".into()),
            time_to_ready: Some(Duration::from_millis(42_500)),
            stages: vec![
                ("metadata".into(), Duration::from_millis(1234)),
                ("s3-sync".into(), Duration::from_millis(5000)),
                ("hooks".into(), Duration::from_millis(7)),
            ],
            failed: false,
        };
        assert_eq!(
            document(&boot),
            concat!(
                r#"{"_aws":{"Timestamp":1765000000123,"CloudWatchMetrics":[{"Namespace":"bootstage","#,
                r#""Dimensions":[["AutoScalingGroupName"]],"Metrics":[{"Name":"TimeToReady","Unit":"Seconds"},"#,
                r#"{"Name":"MetadataDuration","Unit":"Seconds"},{"Name":"S3SyncDuration","Unit":"Seconds"},"#,
                r#"{"Name":"HooksDuration","Unit":"Seconds"},{"Name":"BootFailed","Unit":"Count"}]}]},"#,
                r#""AutoScalingGroupName":"web","TimeToReady":42.5,"MetadataDuration":1.234,"#,
                r#""S3SyncDuration":5.0,"HooksDuration":0.007,"BootFailed":0}"#
            )
        );
    }

    #[test]
    fn a_failed_boot_outside_a_group_has_an_empty_dimension_set() {
        let boot = Boot {
            at: at(T0, 0),
            group: None,
            time_to_ready: None,
            stages: vec![("metadata".into(), Duration::from_millis(900))],
            failed: true,
        };
        assert_eq!(
            document(&boot),
            concat!(
                r#"{"_aws":{"Timestamp":1765000000000,"CloudWatchMetrics":[{"Namespace":"bootstage","#,
                r#""Dimensions":[[]],"Metrics":[{"Name":"MetadataDuration","Unit":"Seconds"},"#,
                r#"{"Name":"BootFailed","Unit":"Count"}]}]},"MetadataDuration":0.9,"BootFailed":1}"#
            )
        );
    }
}
