//! The sections that say what to fetch: `bootstage.sync` (sources into destinations),
//! `bootstage.watch` (keep them in step), `bootstage.import` (SSM parameters by path).
//! Parsed field by field, so a message names the field and the kind of value it got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{SettingsError, kind, known};
use crate::sync::archive;
use crate::sync::source::{Location, Parts};

/// One entry of `bootstage.sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSpec {
    pub from: String,
    pub to: PathBuf,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub file_mode: u32,
    pub dir_mode: u32,
    /// An empty prefix (or a missing archive) syncs an empty tree instead of failing.
    pub allow_empty: bool,
    /// For an archive: the SHA-256 (hex) its bytes must have.
    pub sha256: Option<String>,
    /// For an archive: at most this many entries, and this many bytes unpacked.
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    /// For an S3 archive: fetched in byte ranges above `parts_above` bytes, in parts of
    /// `part_size` bytes, `parts_in_flight` at once (1: one stream).
    pub parts_above: Option<u64>,
    pub part_size: Option<u64>,
    pub parts_in_flight: Option<u64>,
}

pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;

const SYNC_KEYS: &[&str] = &[
    "from",
    "to",
    "owner",
    "group",
    "file_mode",
    "dir_mode",
    "allow_empty",
    "sha256",
    "max_entries",
    "max_bytes",
    "parts_above",
    "part_size",
    "parts_in_flight",
];

/// A part: at least 64 KiB (fewer bytes per request than that only multiplies requests)
/// and at most 512 MiB…
const PART_SIZES: std::ops::RangeInclusive<u64> = 64 << 10..=512 << 20;
/// …at most 64 at once…
const PARTS_IN_FLIGHT: std::ops::RangeInclusive<u64> = 1..=64;
/// …and together at most 1 GiB: what the parts may hold in memory.
const PARTS_MEMORY: u64 = 1 << 30;

/// `bootstage.watch`: the queue, and the polling interval that replaces `--watch`'s (the
/// parameters are per deployment; the unit's is the image's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSpec {
    pub sqs: Option<String>,
    pub interval: Option<Duration>,
    /// How often the watcher resolves references and imports again (`None`: never; the
    /// queue's Parameter Store and Secrets Manager events still do).
    pub secrets_interval: Option<Duration>,
}

/// One entry of `bootstage.import`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub ssm_path: String,
    pub recursive: bool,
}

/// The fields of one settings object, read by name; `at` is its path for messages.
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Fields<'a> {
    pub(super) fn of(value: &'a Value, at: &str, what: &str) -> Result<Self, SettingsError> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                at: at.to_string(),
            }),
            other => Err(SettingsError(format!(
                "{at}: expected {what}, got {}",
                kind(other)
            ))),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, expected: &str, got: &Value) -> SettingsError {
        SettingsError(format!(
            "{}.{key}: expected {expected}, got {}",
            self.at,
            kind(got)
        ))
    }

    fn known(&self, keys: &[&str]) -> Result<(), SettingsError> {
        known(self.map, &self.at, keys)
    }

    fn string(&self, key: &str) -> Result<Option<String>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(key, "a string", other)),
        }
    }

    fn required(&self, key: &str) -> Result<String, SettingsError> {
        self.string(key)?
            .ok_or_else(|| SettingsError(format!("{}.{key}: required", self.at)))
    }

    fn bool(&self, key: &str) -> Result<bool, SettingsError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.bad(key, "true or false", other)),
        }
    }

    fn count(&self, key: &str) -> Result<Option<u64>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a whole number", v)),
        }
    }

    fn mode(&self, key: &str, default: u32) -> Result<u32, SettingsError> {
        let expected = "a string like \"0640\"";
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(text)) => u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    SettingsError(format!(
                        "{}.{key}: {text:?} is not an octal mode like \"0640\"",
                        self.at
                    ))
                }),
            Some(other) => Err(self.bad(key, expected, other)),
        }
    }

    fn duration(&self, key: &str) -> Result<Option<Duration>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ (Value::String(_) | Value::Number(_))) => crate::base::duration::from_json(v)
                .map(Some)
                .map_err(|why| SettingsError(format!("{}.{key}: {why}", self.at))),
            Some(other) => {
                Err(self.bad(key, "a duration like \"10m\" or a number of seconds", other))
            }
        }
    }
}

/// `bootstage.sync`: a list of entries, each checked, and no two destinations that
/// overlap.
pub fn specs(value: &Value, at: &str) -> Result<Vec<SyncSpec>, SettingsError> {
    let Value::Array(items) = value else {
        return Err(SettingsError(format!(
            "{at}: expected a list of sync entries, got {}",
            kind(value)
        )));
    };
    let mut specs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let fields = Fields::of(item, &format!("{at}[{i}]"), "a sync entry (an object)")?;
        fields.known(SYNC_KEYS)?;
        let spec = SyncSpec {
            from: fields.required("from")?,
            to: PathBuf::from(fields.required("to")?),
            owner: fields.string("owner")?,
            group: fields.string("group")?,
            file_mode: fields.mode("file_mode", DEFAULT_FILE_MODE)?,
            dir_mode: fields.mode("dir_mode", DEFAULT_DIR_MODE)?,
            allow_empty: fields.bool("allow_empty")?,
            sha256: fields.string("sha256")?,
            max_entries: fields.count("max_entries")?,
            max_bytes: fields.count("max_bytes")?,
            parts_above: fields.count("parts_above")?,
            part_size: fields.count("part_size")?,
            parts_in_flight: fields.count("parts_in_flight")?,
        };
        if !spec.to.is_absolute() {
            return Err(SettingsError(format!(
                "{at}[{i}].to: must be an absolute path, not {:?}",
                spec.to
            )));
        }
        spec.check()
            .map_err(|why| SettingsError(format!("{at}[{i}]: {why}")))?;
        specs.push(spec);
    }
    check_destinations(&specs, at)?;
    Ok(specs)
}

/// `bootstage.watch`.
pub fn watch(value: &Value, at: &str) -> Result<WatchSpec, SettingsError> {
    let fields = Fields::of(value, at, "an object")?;
    fields.known(&["sqs", "interval", "secrets_interval"])?;
    let spec = WatchSpec {
        sqs: fields.string("sqs")?,
        interval: fields.duration("interval")?,
        secrets_interval: fields.duration("secrets_interval")?,
    };
    for (key, value) in [
        ("interval", spec.interval),
        ("secrets_interval", spec.secrets_interval),
    ] {
        if value.is_some_and(|i| i.is_zero()) {
            return Err(SettingsError(format!("{at}.{key}: must be more than 0")));
        }
    }
    if let Some(url) = &spec.sqs
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(SettingsError(format!(
            "{at}.sqs: must be a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
        )));
    }
    Ok(spec)
}

/// `bootstage.import`.
pub fn imports(value: &Value, at: &str) -> Result<Vec<Import>, SettingsError> {
    let Value::Array(items) = value else {
        return Err(SettingsError(format!(
            "{at}: expected a list of imports, got {}",
            kind(value)
        )));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let fields = Fields::of(item, &here, "an import (an object)")?;
        fields.known(&["ssm_path", "recursive"])?;
        let import = Import {
            ssm_path: fields.required("ssm_path")?,
            recursive: fields.bool("recursive")?,
        };
        if !import.ssm_path.starts_with('/') {
            return Err(SettingsError(format!(
                "{here}.ssm_path: {:?} must start with '/'",
                import.ssm_path
            )));
        }
        out.push(import);
    }
    Ok(out)
}

impl SyncSpec {
    /// `--from/--to`: default modes, no owner change.
    pub fn plain(from: &str, to: &Path) -> SyncSpec {
        SyncSpec {
            from: from.to_string(),
            to: to.to_path_buf(),
            owner: None,
            group: None,
            file_mode: DEFAULT_FILE_MODE,
            dir_mode: DEFAULT_DIR_MODE,
            allow_empty: false,
            sha256: None,
            max_entries: None,
            max_bytes: None,
            parts_above: None,
            part_size: None,
            parts_in_flight: None,
        }
    }

    /// How an S3 archive of this entry is fetched: in parts above a size, or one stream.
    pub fn parts(&self) -> Parts {
        let default = Parts::default();
        Parts {
            above: self.parts_above.unwrap_or(default.above),
            size: self.part_size.unwrap_or(default.size),
            in_flight: self
                .parts_in_flight
                .map_or(default.in_flight, |n| n as usize),
        }
    }

    /// What an archive of this entry may unpack to.
    pub fn limits(&self) -> archive::Limits {
        archive::Limits {
            max_entries: self.max_entries.unwrap_or(archive::DEFAULT_MAX_ENTRIES),
            max_bytes: self.max_bytes.unwrap_or(archive::DEFAULT_MAX_BYTES),
        }
    }

    /// The source is one bootstage reads; the archive-only settings are given only for
    /// an archive, and a pin only as 64 hex digits.
    pub fn check(&self) -> Result<(), String> {
        let location = Location::parse(&self.from).map_err(|e| e.to_string())?;
        let archive = matches!(
            location,
            Location::S3Archive { .. } | Location::FileArchive { .. }
        );
        if !archive
            && (self.sha256.is_some() || self.max_entries.is_some() || self.max_bytes.is_some())
        {
            return Err(format!(
                "{}: \"sha256\", \"max_entries\" and \"max_bytes\" are for an archive source (….tar, .tar.gz, .tgz, .tar.zst)",
                self.from
            ));
        }
        let ranged = [self.parts_above, self.part_size, self.parts_in_flight];
        if !matches!(location, Location::S3Archive { .. }) && ranged.iter().any(Option::is_some) {
            return Err(format!(
                "{}: \"parts_above\", \"part_size\" and \"parts_in_flight\" are for an archive in S3 (s3://BUCKET/KEY.tar.zst …)",
                self.from
            ));
        }
        if let Some(size) = self.part_size
            && !PART_SIZES.contains(&size)
        {
            return Err(format!(
                "{}: \"part_size\" must be from {} to {} bytes",
                self.from,
                PART_SIZES.start(),
                PART_SIZES.end()
            ));
        }
        if let Some(n) = self.parts_in_flight
            && !PARTS_IN_FLIGHT.contains(&n)
        {
            return Err(format!(
                "{}: \"parts_in_flight\" must be from {} to {}",
                self.from,
                PARTS_IN_FLIGHT.start(),
                PARTS_IN_FLIGHT.end()
            ));
        }
        let parts = self.parts();
        if parts.size.saturating_mul(parts.in_flight as u64) > PARTS_MEMORY {
            return Err(format!(
                "{}: \"part_size\" × \"parts_in_flight\" is what the download holds in memory: at most 1 GiB",
                self.from
            ));
        }
        if let Some(pin) = &self.sha256
            && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("{}: \"sha256\" must be 64 hex digits", self.from));
        }
        Ok(())
    }
}

/// Refuses two entries whose destinations are the same or one inside the other (one
/// sync would swap a tree under the other's feet), before anything is written.
fn check_destinations(specs: &[SyncSpec], at: &str) -> Result<(), SettingsError> {
    let normal = |p: &Path| -> PathBuf { p.components().collect() };
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[i + 1..] {
            let (x, y) = (normal(&a.to), normal(&b.to));
            let why = if x == y {
                "share one destination"
            } else if y.starts_with(&x) || x.starts_with(&y) {
                "have one destination inside the other"
            } else {
                continue;
            };
            return Err(SettingsError(format!(
                "{at}: {} and {} {why}",
                a.to.display(),
                b.to.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bootstage.watch.secrets_interval`: absent is never, a bare number is seconds, the
    /// duration syntax works, zero and other types are refused naming the key.
    #[test]
    fn watch_secrets_interval() {
        use serde_json::json;
        let at = "bootstage.watch";
        let secs = |v: Value| watch(&json!({ "secrets_interval": v }), at);
        assert_eq!(watch(&json!({}), at).unwrap().secrets_interval, None);
        assert_eq!(
            secs(json!(300)).unwrap().secrets_interval,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            secs(json!("1h 30m")).unwrap().secrets_interval,
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            secs(json!(0)).unwrap_err().0,
            "bootstage.watch.secrets_interval: must be more than 0"
        );
        assert_eq!(
            secs(json!(true)).unwrap_err().0,
            "bootstage.watch.secrets_interval: expected a duration like \"10m\" or a number of seconds, got true"
        );
    }

    fn entry(from: &str, extra: Value) -> Result<Vec<SyncSpec>, SettingsError> {
        let mut item = serde_json::json!({"from": from, "to": "/srv/app"});
        item.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        specs(&Value::Array(vec![item]), "bootstage.sync")
    }

    /// The part settings: defaults, each key read, each bound and the memory they hold
    /// together refused with its message, and refused on a source that is not an S3
    /// archive.
    #[test]
    fn part_settings() {
        use serde_json::json;
        let s3 = "s3://b/app.tar.zst";
        let parts = |extra| entry(s3, extra).map(|s| s[0].parts());
        assert_eq!(parts(json!({})).unwrap(), Parts::default());
        assert_eq!(
            Parts::default(),
            Parts {
                above: 16 << 20,
                size: 8 << 20,
                in_flight: 8
            }
        );
        assert_eq!(
            parts(json!({"parts_above": 1, "part_size": 65536, "parts_in_flight": 1})).unwrap(),
            Parts {
                above: 1,
                size: 65536,
                in_flight: 1
            }
        );
        let cases = [
            (
                json!({"part_size": 65535}),
                "\"part_size\" must be from 65536 to 536870912 bytes",
            ),
            (
                json!({"part_size": (512 << 20) + 1}),
                "\"part_size\" must be from",
            ),
            (
                json!({"parts_in_flight": 0}),
                "\"parts_in_flight\" must be from 1 to 64",
            ),
            (
                json!({"parts_in_flight": 65}),
                "\"parts_in_flight\" must be from 1 to 64",
            ),
            (
                json!({"part_size": 512 << 20, "parts_in_flight": 3}),
                "in memory: at most 1 GiB",
            ),
            (
                json!({"parts_in_flight": "8"}),
                "parts_in_flight: expected a whole number",
            ),
            (json!({"parts_abvoe": 1}), "parts_above"),
        ];
        for (extra, message) in cases {
            let e = entry(s3, extra.clone()).unwrap_err().0;
            assert!(e.contains(message), "{extra}: {e}");
        }
        for from in [
            "s3://b/prefix/",
            "file:///srv/app.tar.zst",
            "file:///srv/dir/",
        ] {
            let e = entry(from, json!({"part_size": 1 << 20})).unwrap_err().0;
            assert!(e.contains("are for an archive in S3"), "{from}: {e}");
        }
        assert_eq!(Parts::default().count(16 << 20, true), 1);
        assert_eq!(Parts::default().count((16 << 20) + 1, true), 3);
        assert_eq!(Parts::default().count(1 << 30, false), 1);
        let one = Parts {
            in_flight: 1,
            ..Parts::default()
        };
        assert_eq!(one.count(1 << 30, true), 1);
    }
}
