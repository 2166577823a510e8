//! bootstage's own settings: the top-level `bootstage` object of the parameters, as one
//! schema with one parser. Each section is a typed struct (`sync`, `watch`, `import` in
//! `sync.rs`; `notify` in `notify.rs`; `lifecycle` in `lifecycle.rs`; `report` in
//! `report.rs`); stages receive
//! those, never the raw JSON.
//!
//! The metadata stage checks the whole object before it writes anything, so a typo fails
//! the boot at its first stage (exit 65) instead of booting an instance with no config:
//! an unknown key is named by its path (`bootstage.sycn`) with the closest known key when
//! one is near (`did you mean bootstage.sync?`); a wrong type names the field and what it
//! should be. Messages name keys and kinds of values, never a value that could be a
//! secret (a header's token, a webhook URL). [`warnings`] finds what is likely a mistake
//! but could be meant: a top-level key close to `bootstage`, a reference with a
//! misspelt `ssm`/`secretsmanager` key.

pub mod lifecycle;
pub mod notify;
pub mod report;
pub mod sync;

use serde_json::{Map, Value};

use crate::base::exit::{ExitCode, ExitStatus};
use crate::state::envfile::SETTINGS_KEY;

pub use sync::{Import, SyncSpec, WatchSpec};

/// A setting that does not fit the schema: the message names its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl ExitStatus for SettingsError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::BadUserData
    }
}

/// Every section of `bootstage`, in the order the README lists them.
pub const SECTIONS: &[&str] = &["sync", "watch", "import", "notify", "lifecycle", "report"];

/// The `bootstage` object, parsed. A section that is absent is empty (`None`, `[]`).
#[derive(Debug, Clone, Default)]
pub struct Bootstage {
    pub sync: Vec<SyncSpec>,
    pub watch: Option<WatchSpec>,
    pub import: Vec<Import>,
    pub notify: Option<notify::Config>,
    pub lifecycle: Option<lifecycle::Config>,
    pub report: Option<report::Config>,
}

impl Bootstage {
    /// Parses and checks the parameters' `bootstage` object, every section.
    pub fn from_params(params: &Map<String, Value>) -> Result<Bootstage, SettingsError> {
        let Some(value) = params.get(SETTINGS_KEY) else {
            return Ok(Bootstage::default());
        };
        let Value::Object(map) = value else {
            return Err(SettingsError(format!(
                "{SETTINGS_KEY}: expected an object of bootstage's settings, got {}",
                kind(value)
            )));
        };
        known(map, SETTINGS_KEY, SECTIONS)?;
        let section = |name: &str| map.get(name).filter(|v| !v.is_null());
        let at = |name: &str| format!("{SETTINGS_KEY}.{name}");
        Ok(Bootstage {
            sync: match section("sync") {
                Some(v) => sync::specs(v, &at("sync"))?,
                None => Vec::new(),
            },
            watch: section("watch")
                .map(|v| sync::watch(v, &at("watch")))
                .transpose()?,
            import: match section("import") {
                Some(v) => sync::imports(v, &at("import"))?,
                None => Vec::new(),
            },
            notify: section("notify")
                .map(|v| notify::Config::from_value(v, &at("notify")))
                .transpose()?,
            lifecycle: section("lifecycle")
                .map(|v| lifecycle::Config::from_value(v, &at("lifecycle")))
                .transpose()?,
            report: section("report")
                .map(|v| report::Config::from_value(v, &at("report")))
                .transpose()?,
        })
    }
}

/// Checks the image's own file for one section (`/etc/bootstage/notify.json` holds what
/// `bootstage.notify` would); `origin` (its path) names it in messages.
pub fn check_image_file(section: &str, value: &Value, origin: &str) -> Result<(), SettingsError> {
    match section {
        "notify" => notify::Config::from_value(value, origin).map(drop),
        "lifecycle" => lifecycle::Config::from_value(value, origin).map(drop),
        "report" => report::Config::from_value(value, origin).map(drop),
        other => Err(SettingsError(format!(
            "{origin}: the image has no settings file for bootstage.{other}"
        ))),
    }
}

/// What is likely a mistake in the parameters but could be meant, one message each,
/// naming keys only: a top-level key within three edits of `bootstage` (`bootstrap`,
/// `Bootstage`, `bootstage_`), an object that looks like a reference with a misspelt key (`smm`,
/// `secretmanager`).
pub fn warnings(params: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for key in params.keys() {
        if key != SETTINGS_KEY && distance(&key.to_lowercase(), SETTINGS_KEY) <= 3 {
            out.push(format!(
                "the top-level key {key:?} is not bootstage's settings (they go under \"{SETTINGS_KEY}\"): it is exported as an ordinary parameter"
            ));
        }
    }
    let mut path = Vec::new();
    near_references(&Value::Object(params.clone()), &mut path, &mut out);
    out
}

fn near_references(value: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if map.contains_key("ssm") || map.contains_key("secretsmanager") => {}
        Value::Object(map) => {
            for (key, value) in map {
                let lower = key.to_lowercase();
                let near = ["ssm", "secretsmanager"]
                    .into_iter()
                    .find(|r| distance(&lower.replace(['_', '-'], ""), r) <= r.len() / 4 + 1);
                if let Some(reference) = near
                    && value.is_string()
                {
                    path.push(key.clone());
                    out.push(format!(
                        "parameter {:?} looks like a reference with a misspelt key (did you mean {reference:?}?): it is kept as an ordinary object",
                        path[..path.len() - 1].join(".")
                    ));
                    path.pop();
                }
                path.push(key.clone());
                near_references(value, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                near_references(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Refuses a key of `map` that is not in `keys`, naming its path (`at.key`), the closest
/// known key when one is near, and the known keys.
pub fn known(map: &Map<String, Value>, at: &str, keys: &[&str]) -> Result<(), SettingsError> {
    let Some(other) = map.keys().find(|k| !keys.contains(&k.as_str())) else {
        return Ok(());
    };
    let hint = match suggest(other, keys) {
        Some(near) => format!("; did you mean {at}.{near}?"),
        None => String::new(),
    };
    Err(SettingsError(format!(
        "{at}.{other}: unknown setting{hint} (known: {})",
        keys.join(", ")
    )))
}

/// The known key closest to `word`, if it is within a third of its length in edits (at
/// least one): close enough to be a typo.
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_lowercase();
    known
        .iter()
        .map(|k| (distance(&lower, k), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

/// Damerau–Levenshtein distance (optimal string alignment): insertions, deletions,
/// substitutions and transpositions of neighbours each cost one (`sycn` → `sync` is 1).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A value's kind for a message, with a number or a boolean shown (never a string's
/// text, which could be a secret): `the number 640`, `a string`, `an object`.
pub fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Bootstage, String> {
        Bootstage::from_params(v.as_object().unwrap()).map_err(|e| e.0)
    }

    #[test]
    fn distances_and_suggestions() {
        assert_eq!(distance("sycn", "sync"), 1);
        assert_eq!(distance("bootstrap", "bootstage"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(suggest("sycn", SECTIONS), Some("sync"));
        assert_eq!(suggest("Notify", SECTIONS), Some("notify"));
        assert_eq!(suggest("imports", SECTIONS), Some("import"));
        assert_eq!(suggest("lifecyle", SECTIONS), Some("lifecycle"));
        assert_eq!(suggest("banana", SECTIONS), None);
    }

    #[test]
    fn a_misspelt_key_in_each_section_is_refused_with_its_path() {
        let cases = [
            (
                json!({"bootstage": {"sycn": []}}),
                "bootstage.sycn: unknown setting; did you mean bootstage.sync? (known: sync, watch, import, notify, lifecycle, report)",
            ),
            (
                json!({"bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "file_mod": "0640"}]}}),
                "bootstage.sync[0].file_mod: unknown setting; did you mean bootstage.sync[0].file_mode?",
            ),
            (
                json!({"bootstage": {"watch": {"intervall": "5m"}}}),
                "bootstage.watch.intervall: unknown setting; did you mean bootstage.watch.interval?",
            ),
            (
                json!({"bootstage": {"import": [{"ssm_paht": "/a/"}]}}),
                "bootstage.import[0].ssm_paht: unknown setting; did you mean bootstage.import[0].ssm_path?",
            ),
            (
                json!({"bootstage": {"notify": {"ulr": "https://x"}}}),
                "bootstage.notify.ulr: unknown setting; did you mean bootstage.notify.url?",
            ),
            (
                json!({"bootstage": {"lifecycle": {"asg": {"hook": "h", "hold-for": "1h"}}}}),
                "bootstage.lifecycle.asg.hold-for: unknown setting; did you mean bootstage.lifecycle.asg.hold_for?",
            ),
        ];
        for (params, message) in cases {
            let err = parse(params).unwrap_err();
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn a_wrong_type_names_the_field_and_never_a_string_value() {
        let cases = [
            (
                json!({"bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "file_mode": 640}]}}),
                "bootstage.sync[0].file_mode: expected a string like \"0640\", got the number 640",
            ),
            (
                json!({"bootstage": {"sync": {"from": "s3://b/p/"}}}),
                "bootstage.sync: expected a list of sync entries, got an object",
            ),
            (
                json!({"bootstage": {"sync": [{"from": "s3://b/p/", "to": "/srv/c", "allow_empty": "yes"}]}}),
                "bootstage.sync[0].allow_empty: expected true or false, got a string",
            ),
            (
                json!({"bootstage": {"sync": [{"to": "/srv/c"}]}}),
                "bootstage.sync[0].from: required",
            ),
            (
                json!({"bootstage": {"sync": [{"from": "s3://b/p/", "to": "srv/c"}]}}),
                "bootstage.sync[0].to: must be an absolute path",
            ),
            (
                json!({"bootstage": {"watch": {"interval": true}}}),
                "bootstage.watch.interval: expected a duration like \"10m\" or a number of seconds, got true",
            ),
            (
                json!({"bootstage": "sync"}),
                "bootstage: expected an object of bootstage's settings, got a string",
            ),
            (
                json!({"bootstage": {"notify": {"headers": {"Authorization": 5}}}}),
                "bootstage.notify.headers.Authorization must be a string",
            ),
        ];
        for (params, message) in cases {
            let err = parse(params).unwrap_err();
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn near_misses_are_warnings() {
        let params = json!({
            "bootstrap": {"sync": []},
            "Bootstage": {},
            "db": {"password": {"smm": "/x"}},
            "api": {"secretmanager": "shop/api"},
            "ok": {"ssm": "/y"},
            "hosts": "ssm",
        });
        assert_eq!(
            warnings(params.as_object().unwrap()),
            [
                "the top-level key \"bootstrap\" is not bootstage's settings (they go under \"bootstage\"): it is exported as an ordinary parameter",
                "the top-level key \"Bootstage\" is not bootstage's settings (they go under \"bootstage\"): it is exported as an ordinary parameter",
                "parameter \"db.password\" looks like a reference with a misspelt key (did you mean \"ssm\"?): it is kept as an ordinary object",
                "parameter \"api\" looks like a reference with a misspelt key (did you mean \"secretsmanager\"?): it is kept as an ordinary object",
            ]
        );
    }
}
