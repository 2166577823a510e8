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
    /// The source's URL; empty for a release pointer until a pass resolves it
    /// ([`SyncSpec::resolve`]).
    pub from: String,
    /// `"from": {"ssm": NAME}`: a release pointer, the SSM parameter whose value is the
    /// source (`s3://…` with an optional `#sha256=…` pin), read again on every pass.
    pub release: Option<String>,
    /// Generations kept in the destination's home, the current one included (at least 1).
    pub keep: usize,
    /// A command (`/bin/sh -c`) that says whether a new generation is healthy, run after
    /// it is swapped in (and `--on-change` ran); a failure swaps the previous one back.
    pub verify: Option<String>,
    pub verify_timeout: Duration,
    pub verify_attempts: u32,
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
/// Generations kept per destination: the current and the previous (`sync::tree` owns them).
pub use crate::sync::tree::DEFAULT_KEEP;
/// At most this many (each a whole tree on disk).
const MAX_KEEP: u64 = 32;
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_VERIFY_ATTEMPTS: u64 = 100;
/// A release pointer's value is at most this long (SSM's standard tier holds 4 KB).
const MAX_POINTER: usize = 2048;

const SYNC_KEYS: &[&str] = &[
    "from",
    "keep",
    "verify",
    "verify_timeout",
    "verify_attempts",
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
        let here = format!("{at}[{i}]");
        let (from, release) = match fields.get("from") {
            Some(Value::Object(_)) => (String::new(), Some(pointer(item, &here)?)),
            _ => (fields.required("from")?, None),
        };
        let keep = match fields.count("keep")? {
            None => DEFAULT_KEEP,
            Some(n) if (1..=MAX_KEEP).contains(&n) => n as usize,
            Some(_) => {
                return Err(SettingsError(format!(
                    "{here}.keep: must be from 1 to {MAX_KEEP}"
                )));
            }
        };
        let verify_attempts = match fields.count("verify_attempts")? {
            None => 1,
            Some(n) if (1..=MAX_VERIFY_ATTEMPTS).contains(&n) => n as u32,
            Some(_) => {
                return Err(SettingsError(format!(
                    "{here}.verify_attempts: must be from 1 to {MAX_VERIFY_ATTEMPTS}"
                )));
            }
        };
        let verify_timeout = fields
            .duration("verify_timeout")?
            .unwrap_or(DEFAULT_VERIFY_TIMEOUT);
        if verify_timeout.is_zero() {
            return Err(SettingsError(format!(
                "{here}.verify_timeout: must be more than 0"
            )));
        }
        let verify = fields.string("verify")?;
        if verify.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(SettingsError(format!(
                "{here}.verify: an empty command; leave \"verify\" out instead"
            )));
        }
        if verify.is_none()
            && (fields.get("verify_timeout").is_some() || fields.get("verify_attempts").is_some())
        {
            return Err(SettingsError(format!(
                "{here}: \"verify_timeout\" and \"verify_attempts\" are for a \"verify\" command"
            )));
        }
        let spec = SyncSpec {
            from,
            release,
            keep,
            verify,
            verify_timeout,
            verify_attempts,
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
            release: None,
            keep: DEFAULT_KEEP,
            verify: None,
            verify_timeout: DEFAULT_VERIFY_TIMEOUT,
            verify_attempts: 1,
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

    /// The SSM parameter this entry's source is read from, if it is a release pointer.
    pub(crate) fn release_parameter(&self) -> Option<&str> {
        self.release.as_deref()
    }

    /// This entry with its release pointer's `value` as its source: `URL` or
    /// `URL#sha256=<64 hex>`, checked exactly as a `from` written in user-data is. The value
    /// is untrusted (whoever may put the parameter); a message names the parameter and
    /// shows at most the start of the value.
    pub fn resolve(&self, value: &str) -> Result<SyncSpec, String> {
        let name = self.release.as_deref().unwrap_or_default();
        // The value itself is never shown: a pointer aimed at the wrong parameter (a
        // SecureString) would put a secret into the log and the status record.
        let refuse = |why: &str| {
            format!(
                "release pointer SSM parameter {name:?} for {}: its value {why}",
                self.to.display(),
            )
        };
        if value.len() > MAX_POINTER {
            return Err(refuse(&format!("is longer than {MAX_POINTER} bytes")));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse(
                "has a space or a control character; it must be one URL (s3://BUCKET/KEY.tar.zst, optionally #sha256=<64 hex>)",
            ));
        }
        let (url, pin) = match value.split_once('#') {
            None => (value, None),
            Some((url, fragment)) => match fragment.strip_prefix("sha256=") {
                Some(pin) => (url, Some(pin.to_ascii_lowercase())),
                None => return Err(refuse("has a '#' that is not followed by sha256=<64 hex>")),
            },
        };
        if url.is_empty() {
            return Err(refuse("is empty"));
        }
        // The value is SSM's, not user-data's: it may choose which object, never a local
        // path (file:// would have root copy any file it can read into the app's tree).
        if !url.starts_with("s3://") {
            return Err(refuse(
                "is not an s3:// URL (a release pointer names an object or a prefix in S3, never a local path)",
            ));
        }
        let resolved = SyncSpec {
            from: url.to_string(),
            sha256: pin,
            ..self.clone()
        };
        match resolved.check() {
            Ok(()) => Ok(resolved),
            Err(why) => {
                // `check`'s reasons start with the URL, which is not shown.
                let why = why
                    .strip_prefix(url)
                    .map_or(why.as_str(), |w| w.trim_start_matches(':').trim_start());
                let why: String = why.chars().take(300).collect();
                Err(refuse(&format!("is not a source bootstage reads: {why}")))
            }
        }
    }

    /// The source is one bootstage reads; the archive-only settings are given only for
    /// an archive, and a pin only as 64 hex digits.
    pub fn check(&self) -> Result<(), String> {
        if self.release.is_some() && self.from.is_empty() {
            // A release pointer: its value is checked on each pass (`resolve`); a pin
            // comes with the value, and the archive's settings are checked against it.
            return match self.sha256 {
                Some(_) => Err(format!(
                    "release pointer {:?}: \"sha256\" comes with the parameter's value (URL#sha256=<64 hex>), not in the entry",
                    self.release.as_deref().unwrap_or_default()
                )),
                None => Ok(()),
            };
        }
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

/// The SSM parameter a `"from": {"ssm": NAME}` names: only the key `ssm`, a name as SSM
/// spells one (letters, digits, `_.-/`, at most 1011 characters).
fn pointer(item: &Value, at: &str) -> Result<String, SettingsError> {
    let here = format!("{at}.from");
    let fields = Fields::of(&item["from"], &here, "a URL or {\"ssm\": PARAMETER}")?;
    fields.known(&["ssm"])?;
    let name = fields.required("ssm")?;
    let valid = !name.is_empty()
        && name.len() <= 1011
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
        && !name.ends_with('/');
    if !valid {
        return Err(SettingsError(format!(
            "{here}.ssm: {name:?} is not an SSM parameter name (letters, digits and _.-/, not ending in /)"
        )));
    }
    Ok(name)
}

/// Whether `path` (in the parameters, as `secrets::refs` walks them) is a sync entry's
/// `from`: there `{"ssm": …}` is a release pointer the sync reads on each pass, not a
/// reference the metadata stage resolves once.
pub fn is_release_pointer(path: &[String]) -> bool {
    matches!(path, [b, s, i, f] if b == crate::state::envfile::SETTINGS_KEY && s == "sync" && f == "from" && i.parse::<usize>().is_ok())
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
        assert_eq!(Parts::default().count(8 << 20, true), 1);
        assert_eq!(Parts::default().count(16 << 20, true), 2);
        assert_eq!(Parts::default().count((16 << 20) + 1, true), 3);
        assert_eq!(Parts::default().count(1 << 30, false), 1);
        let one = Parts {
            in_flight: 1,
            ..Parts::default()
        };
        assert_eq!(one.count(1 << 30, true), 1);
    }

    /// A release pointer: parsed from `{"ssm": NAME}`, checked for its shape; its value
    /// resolved through the same checks as a `from` in user-data, refused otherwise with
    /// the parameter's name and a bounded excerpt of the value.
    #[test]
    fn release_pointers() {
        use serde_json::json;
        let pointer = |from: Value, extra: Value| {
            let mut item = json!({"from": from, "to": "/srv/app"});
            item.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            specs(&Value::Array(vec![item]), "bootstage.sync").map(|mut s| s.remove(0))
        };
        let spec = pointer(json!({"ssm": "/shop/web/release"}), json!({})).unwrap();
        assert_eq!(spec.release_parameter(), Some("/shop/web/release"));
        assert_eq!(
            (spec.from.as_str(), spec.keep, spec.verify_attempts),
            ("", 2, 1)
        );
        let plain = entry("s3://b/a/", json!({})).unwrap().remove(0);
        assert_eq!(plain.release_parameter(), None);
        let refused = [
            (
                json!({"ssm": "a b"}),
                json!({}),
                "is not an SSM parameter name",
            ),
            (
                json!({"ssm": "/a/"}),
                json!({}),
                "is not an SSM parameter name",
            ),
            (json!({"ssm": 3}), json!({}), "from.ssm: expected a string"),
            (json!({"ssm": "/a", "env": "X"}), json!({}), "env"),
            (json!({"secretsmanager": "x"}), json!({}), "secretsmanager"),
            (
                json!({"ssm": "/a"}),
                json!({"sha256": "0".repeat(64)}),
                "comes with the parameter's value",
            ),
            (
                json!({"ssm": "/a"}),
                json!({"keep": 0}),
                "keep: must be from 1 to 32",
            ),
            (
                json!({"ssm": "/a"}),
                json!({"keep": 33}),
                "keep: must be from 1 to 32",
            ),
            (
                json!({"ssm": "/a"}),
                json!({"verify_attempts": 2}),
                "are for a \"verify\" command",
            ),
            (
                json!({"ssm": "/a"}),
                json!({"verify": " "}),
                "an empty command",
            ),
            (
                json!({"ssm": "/a"}),
                json!({"verify": "true", "verify_timeout": 0}),
                "verify_timeout: must be more than 0",
            ),
        ];
        for (from, extra, message) in refused {
            let e = pointer(from.clone(), extra.clone()).unwrap_err().0;
            assert!(e.contains(message), "{from} {extra}: {e}");
        }
        let verified = pointer(
            json!({"ssm": "/a"}),
            json!({"verify": "curl -f localhost", "verify_timeout": 5, "verify_attempts": 3, "keep": 3}),
        )
        .unwrap();
        assert_eq!(
            (
                verified.verify.as_deref(),
                verified.verify_timeout,
                verified.verify_attempts,
                verified.keep
            ),
            (Some("curl -f localhost"), Duration::from_secs(5), 3, 3)
        );

        let pin = "ab".repeat(32);
        let ok = spec
            .resolve(&format!(
                "s3://art/web/1.4.2.tar.zst#sha256={}",
                pin.to_uppercase()
            ))
            .unwrap();
        assert_eq!(
            (
                ok.from.as_str(),
                ok.sha256.as_deref(),
                ok.release_parameter()
            ),
            (
                "s3://art/web/1.4.2.tar.zst",
                Some(pin.as_str()),
                Some("/shop/web/release")
            )
        );
        assert_eq!(spec.resolve("s3://art/web/1.4.2/").unwrap().sha256, None);
        let long = format!("s3://b/{}.tar.zst", "k".repeat(3000));
        let prefix_pinned = format!("s3://art/web/#sha256={pin}");
        let values = [
            ("", "is empty"),
            ("https://evil/x.tar.zst", "is not an s3:// URL"),
            ("s3://", "is not a source bootstage reads"),
            // A parameter's value never names a local path for root to copy from.
            ("file:///etc/", "is not an s3:// URL"),
            ("file:///root/app.tar.zst", "is not an s3:// URL"),
            (
                "s3://art/web/1.tar.zst#md5=00",
                "a '#' that is not followed by sha256",
            ),
            (
                "s3://art/web/1.tar.zst#sha256=abc",
                "\"sha256\" must be 64 hex digits",
            ),
            (prefix_pinned.as_str(), "are for an archive"),
            (
                "s3://art/web/1.tar.zst\nrm -rf /",
                "a space or a control character",
            ),
            (long.as_str(), "is longer than 2048 bytes"),
        ];
        for (value, message) in values {
            let e = spec.resolve(value).unwrap_err();
            assert!(
                e.starts_with(
                    "release pointer SSM parameter \"/shop/web/release\" for /srv/app: its value"
                ),
                "{e}"
            );
            assert!(e.contains(message), "{value:?}: {e}");
            assert!(e.len() < 700, "bounded: {e}");
        }
        assert!(is_release_pointer(&[
            "bootstage".into(),
            "sync".into(),
            "0".into(),
            "from".into()
        ]));
        assert!(!is_release_pointer(&[
            "app".into(),
            "sync".into(),
            "0".into(),
            "from".into()
        ]));
        assert!(!is_release_pointer(&[
            "bootstage".into(),
            "sync".into(),
            "0".into(),
            "to".into()
        ]));
    }
}
