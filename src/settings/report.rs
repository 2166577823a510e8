//! `bootstage.report` (or the image's `/etc/bootstage/report.json`): what a boot leaves
//! behind for the people watching a fleet (`report` does it, `stage::notice` calls it).
//!
//! ```json
//! "report": {
//!   "logs": "s3://bucket/boot-logs/{instance_id}/{boot_id}/",
//!   "metrics": true,
//!   "tags": true
//! }
//! ```
//!
//! `logs` is the S3 prefix a failed boot's forensics go to, or an object with it and its
//! bounds: `{"to": "s3://…", "lines": 2000, "bytes": 1048576, "units": ["myapp.service"]}`
//! (the journal's last `lines` lines of the boot, at most `bytes` of them, for
//! `bootstage-*` units, the unit that failed and `units`). `{instance_id}` and `{boot_id}`
//! are the only placeholders. `metrics` writes CloudWatch embedded metric format lines
//! to the journal. `tags` keeps the instance's `bootstage:status`, `bootstage:release` and
//! `bootstage:ready-seconds` tags up to date (`stage::tags`). Messages name the setting,
//! never its value.

use serde_json::Value;

use super::{SettingsError, kind, known};

/// The journal's lines a failed boot's excerpt keeps at most, unless `lines` says.
pub const DEFAULT_LINES: u32 = 2000;
/// Its bytes at most (the last ones), unless `bytes` says.
pub const DEFAULT_BYTES: u64 = 1024 * 1024;
/// What `lines` and `bytes` may ask at most: the excerpt is held in memory and uploaded
/// within the failure unit's few seconds.
pub const MAX_LINES: u32 = 100_000;
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The placeholders a prefix may hold.
pub const PLACEHOLDERS: &[&str] = &["instance_id", "boot_id"];

/// `bootstage.report`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub logs: Option<Logs>,
    pub metrics: bool,
    pub tags: bool,
}

/// Where a failed boot's forensics go, and how much of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    pub bucket: String,
    /// The key prefix, placeholders unexpanded, ending in `/` (or empty: the bucket's root).
    pub prefix: String,
    pub lines: u32,
    pub bytes: u64,
    /// Units whose journal is included beside `bootstage-*` and the failed unit.
    pub units: Vec<String>,
}

impl Config {
    pub fn from_value(value: &Value, origin: &str) -> Result<Config, SettingsError> {
        let Value::Object(map) = value else {
            return Err(SettingsError(format!(
                "{origin}: expected an object, got {}",
                kind(value)
            )));
        };
        known(map, origin, &["logs", "metrics", "tags"])?;
        let switch = |key: &str| match map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(SettingsError(format!(
                "{origin}.{key}: expected true or false, got {}",
                kind(other)
            ))),
        };
        let metrics = switch("metrics")?;
        let tags = switch("tags")?;
        let logs = match map.get("logs") {
            None | Some(Value::Null) => None,
            Some(v) => Some(Logs::from_value(v, &format!("{origin}.logs"))?),
        };
        Ok(Config {
            logs,
            metrics,
            tags,
        })
    }
}

impl Logs {
    fn from_value(value: &Value, origin: &str) -> Result<Logs, SettingsError> {
        let bad = |key: &str, why: String| SettingsError(format!("{origin}{key}: {why}"));
        let (to, map) = match value {
            Value::String(to) => (to.as_str(), None),
            Value::Object(map) => {
                known(map, origin, &["to", "lines", "bytes", "units"])?;
                match map.get("to") {
                    Some(Value::String(to)) => (to.as_str(), Some(map)),
                    None | Some(Value::Null) => return Err(bad(".to", "required".into())),
                    Some(other) => {
                        return Err(bad(
                            ".to",
                            format!("expected an s3:// prefix, got {}", kind(other)),
                        ));
                    }
                }
            }
            other => {
                return Err(bad(
                    "",
                    format!(
                        "expected an s3:// prefix or an object with \"to\", got {}",
                        kind(other)
                    ),
                ));
            }
        };
        let at = if map.is_some() { ".to" } else { "" };
        let (bucket, prefix) = location(to).map_err(|why| bad(at, why))?;
        let number = |key: &str, max: u64, default: u64| -> Result<u64, SettingsError> {
            match map.and_then(|m| m.get(key)) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(bad(
                        &format!(".{key}"),
                        format!("expected a whole number from 1 to {max}, got the number {n}"),
                    )),
                },
                Some(other) => Err(bad(
                    &format!(".{key}"),
                    format!("expected a whole number, got {}", kind(other)),
                )),
            }
        };
        let lines = number("lines", MAX_LINES.into(), DEFAULT_LINES.into())? as u32;
        let bytes = number("bytes", MAX_BYTES, DEFAULT_BYTES)?;
        let units = match map.and_then(|m| m.get("units")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(unit) if unit_name(unit) => Ok(unit.clone()),
                    Value::String(_) => Err(bad(
                        &format!(".units[{i}]"),
                        "not a unit name (letters, digits and :-_.@\\ , globs * ? [ ], not starting with -)".into(),
                    )),
                    other => Err(bad(
                        &format!(".units[{i}]"),
                        format!("expected a unit name, got {}", kind(other)),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(bad(
                    ".units",
                    format!("expected a list of unit names, got {}", kind(other)),
                ));
            }
        };
        Ok(Logs {
            bucket,
            prefix,
            lines,
            bytes,
            units,
        })
    }
}

/// `s3://bucket/prefix/` → (bucket, prefix ending in `/` or empty). The prefix's braces
/// must be known placeholders; a message names the placeholder, never the URL.
fn location(to: &str) -> Result<(String, String), String> {
    let Some(rest) = to.strip_prefix("s3://") else {
        return Err("must be an s3:// prefix (s3://bucket/prefix/)".into());
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("names no valid bucket (s3://bucket/prefix/)".into());
    }
    let mut rest = prefix;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("has a } without its {".into());
        }
        let Some(close) = rest[open..].find('}') else {
            return Err("has a { without its }".into());
        };
        let name = &rest[open + 1..open + close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "has an unknown placeholder {{{name}}} (known: {{instance_id}}, {{boot_id}})"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if prefix.split('/').any(|segment| segment == "..") {
        return Err("has a .. segment".into());
    }
    let mut prefix = prefix.trim_start_matches('/').to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((bucket.to_string(), prefix))
}

/// A unit name or a glob of them, safe as one `--unit=` argument.
fn unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\*?[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Config, String> {
        Config::from_value(&v, "bootstage.report").map_err(|e| e.0)
    }

    #[test]
    fn a_prefix_alone_or_with_its_bounds() {
        assert_eq!(
            parse(json!({"logs": "s3://b/boot-logs/{instance_id}/{boot_id}/", "metrics": true})),
            Ok(Config {
                logs: Some(Logs {
                    bucket: "b".into(),
                    prefix: "boot-logs/{instance_id}/{boot_id}/".into(),
                    lines: DEFAULT_LINES,
                    bytes: DEFAULT_BYTES,
                    units: vec![],
                }),
                metrics: true,
                tags: false,
            })
        );
        assert_eq!(
            parse(
                json!({"logs": {"to": "s3://b/x", "lines": 10, "bytes": 4096, "units": ["myapp.service", "web@*.service"]}})
            ),
            Ok(Config {
                logs: Some(Logs {
                    bucket: "b".into(),
                    prefix: "x/".into(),
                    lines: 10,
                    bytes: 4096,
                    units: vec!["myapp.service".into(), "web@*.service".into()],
                }),
                metrics: false,
                tags: false,
            })
        );
        assert_eq!(
            parse(json!({"logs": "s3://b"}))
                .unwrap()
                .logs
                .unwrap()
                .prefix,
            ""
        );
        assert_eq!(parse(json!({})), Ok(Config::default()));
        assert_eq!(
            parse(json!({"tags": true})),
            Ok(Config {
                tags: true,
                ..Config::default()
            })
        );
    }

    #[test]
    fn what_is_refused_is_named_without_its_value() {
        let cases = [
            (
                json!({"status": true}),
                "bootstage.report.status: unknown setting (known: logs, metrics, tags)",
            ),
            (
                json!({"tag": true}),
                "bootstage.report.tag: unknown setting; did you mean bootstage.report.tags?",
            ),
            (
                json!({"tags": "yes"}),
                "bootstage.report.tags: expected true or false, got a string",
            ),
            (
                json!({"metrix": true}),
                "bootstage.report.metrix: unknown setting; did you mean bootstage.report.metrics?",
            ),
            (
                json!({"metrics": "yes"}),
                "bootstage.report.metrics: expected true or false, got a string",
            ),
            (
                json!({"logs": "https://secret.example/x"}),
                "bootstage.report.logs: must be an s3:// prefix (s3://bucket/prefix/)",
            ),
            (
                json!({"logs": "s3:///x/"}),
                "bootstage.report.logs: names no valid bucket",
            ),
            (
                json!({"logs": "s3://b/{instance}/"}),
                "bootstage.report.logs: has an unknown placeholder {instance} (known: {instance_id}, {boot_id})",
            ),
            (
                json!({"logs": "s3://b/{boot_id/"}),
                "bootstage.report.logs: has a { without its }",
            ),
            (
                json!({"logs": "s3://b/x}/"}),
                "bootstage.report.logs: has a } without its {",
            ),
            (
                json!({"logs": "s3://b/a/../b/"}),
                "bootstage.report.logs: has a .. segment",
            ),
            (
                json!({"logs": {"lines": 5}}),
                "bootstage.report.logs.to: required",
            ),
            (
                json!({"logs": {"to": "s3://b/", "lines": 0}}),
                "bootstage.report.logs.lines: expected a whole number from 1 to 100000, got the number 0",
            ),
            (
                json!({"logs": {"to": "s3://b/", "bytes": "1MiB"}}),
                "bootstage.report.logs.bytes: expected a whole number, got a string",
            ),
            (
                json!({"logs": {"to": "s3://b/", "units": ["--all"]}}),
                "bootstage.report.logs.units[0]: not a unit name",
            ),
            (
                json!({"logs": {"to": "s3://b/", "unit": []}}),
                "bootstage.report.logs.unit: unknown setting; did you mean bootstage.report.logs.units?",
            ),
            (
                json!({"logs": 5}),
                "bootstage.report.logs: expected an s3:// prefix or an object with \"to\", got the number 5",
            ),
            (
                json!([]),
                "bootstage.report: expected an object, got a list",
            ),
        ];
        for (value, message) in cases {
            let err = parse(value).unwrap_err();
            assert!(err.starts_with(message), "{err}\n  expected: {message}");
            assert!(!err.contains("secret.example"), "{err}");
        }
    }
}
