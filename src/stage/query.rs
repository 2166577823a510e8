//! `bootstage query KEY` and `query --all`: one value, or everything, from what the
//! metadata stage wrote, for scripts and people.
//!
//! The queried document is `{"params": <params.json>, "instance": <instance.json>}`. A KEY
//! is a dotted path into it (`instance.region`, `params.app.db.host`, a number indexes a
//! list: `params.bootstage.sync.0.from`); a path whose first segment is neither `params` nor
//! `instance` is read under `params`, so `query app.db.host` works (a parameter named
//! `instance` is `params.instance`). A string prints as itself, anything else as JSON
//! (objects and lists pretty-printed); `--json` prints strings as JSON too.
//!
//! Both files are read whole before anything is printed: a reader who may not read one
//! (they are 0600, root's) gets an error and no output at all, never half an answer.

use serde_json::{Map, Value};

use crate::stage::error::{Error, ExitCode, ExitStatus, Result};
use crate::state::StateDir;

/// `bootstage query KEY | --all [--json]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A dotted path; `None` with `all`.
    pub key: Option<String>,
    pub all: bool,
    /// Strings as JSON too.
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no such key: {0}")]
    NoSuchKey(String),
    #[error("no parameters in {0} yet: the metadata stage has not run (see bootstage status)")]
    NotYet(String),
}

impl From<QueryError> for Error {
    fn from(e: QueryError) -> Error {
        Error::Stage(Box::new(e))
    }
}

impl ExitStatus for QueryError {
    fn exit_code(&self) -> ExitCode {
        match self {
            QueryError::NoSuchKey(_) => ExitCode::Failed,
            QueryError::NotYet(_) => ExitCode::NoInput,
        }
    }
}

pub fn run(state: &StateDir, args: &Settings) -> Result<()> {
    let doc = document(state)?;
    let value = match &args.key {
        Some(key) => lookup(&doc, key).ok_or_else(|| QueryError::NoSuchKey(key.clone()))?,
        None => &doc,
    };
    print!("{}", render(value, args.json));
    Ok(())
}

/// The credentials an app's unit may pass instead of the state dir's files
/// (`LoadCredential=bootstage.params.json:/run/bootstage/params.json`, and likewise
/// `bootstage.instance.json`), for an app under its own `User=`.
pub const CREDENTIALS: [&str; 2] = ["bootstage.params.json", "bootstage.instance.json"];

/// Both files, whole, or an error: through the unit's credentials when it has both.
pub fn document(state: &StateDir) -> Result<Value> {
    let mut doc = Map::new();
    let from_credentials = CREDENTIALS.map(crate::state::credential);
    let paths = match from_credentials {
        [Some(params), Some(instance)] => [params, instance],
        _ => [state.params_json(), state.instance_json()],
    };
    for (name, path) in ["params", "instance"].into_iter().zip(paths) {
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QueryError::NotYet(state.root().display().to_string()).into());
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        let value: Value = serde_json::from_slice(&text).map_err(|e| Error::Read {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        doc.insert(name.into(), value);
    }
    Ok(Value::Object(doc))
}

/// A `bootstage.NAME` setting (`notify`, `lifecycle`): the parameters' if they have it,
/// else the image's file `fallback` (so a boot whose metadata stage failed still has it),
/// else `None`; with where it came from, for messages. A `null` in the parameters is no
/// setting, as `settings::Bootstage` reads it: the image's file applies. `not_json` makes
/// the error for a file that is not JSON, in the caller's own terms.
pub fn setting(
    state: &StateDir,
    name: &str,
    fallback: &std::path::Path,
    not_json: impl FnOnce(String) -> Error,
) -> Result<Option<(Value, String)>> {
    let from_params = document(state)
        .ok()
        .and_then(|doc| lookup(&doc, &format!("params.bootstage.{name}")).cloned())
        .filter(|value| !value.is_null());
    if let Some(value) = from_params {
        return Ok(Some((value, format!("bootstage.{name}"))));
    }
    match std::fs::read(fallback) {
        Ok(text) => {
            let value = serde_json::from_slice(&text)
                .map_err(|e| not_json(format!("{}: not JSON ({e})", fallback.display())))?;
            Ok(Some((value, fallback.display().to_string())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: fallback.into(),
            source,
        }),
    }
}

pub fn lookup<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    let mut segments: Vec<&str> = key.split('.').collect();
    if !matches!(segments.first(), Some(&"params" | &"instance")) {
        segments.insert(0, "params");
    }
    segments.iter().try_fold(doc, |value, segment| match value {
        Value::Object(map) => map.get(*segment),
        Value::Array(list) => list.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

fn render(value: &Value, json: bool) -> String {
    let mut text = match value {
        Value::String(s) if !json => s.clone(),
        Value::Object(_) | Value::Array(_) => {
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        }
        _ => value.to_string(),
    };
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let doc = json!({
            "params": {"app": {"port": 8080, "name": "web"}, "instance": "p",
                       "bootstage": {"sync": [{"from": "s3://b/p/"}]}},
            "instance": {"region": "eu-west-1", "tags": null}
        });
        assert_eq!(lookup(&doc, "app.port"), Some(&json!(8080)));
        assert_eq!(lookup(&doc, "params.app.name"), Some(&json!("web")));
        assert_eq!(lookup(&doc, "instance.region"), Some(&json!("eu-west-1")));
        assert_eq!(lookup(&doc, "params.instance"), Some(&json!("p")));
        assert_eq!(
            lookup(&doc, "bootstage.sync.0.from"),
            Some(&json!("s3://b/p/"))
        );
        assert_eq!(lookup(&doc, "instance.tags"), Some(&Value::Null));
        for missing in [
            "app.nope",
            "app.port.x",
            "bootstage.sync.1",
            "bootstage.sync.x",
            "",
        ] {
            assert_eq!(lookup(&doc, missing), None, "{missing}");
        }
    }

    #[test]
    fn rendering() {
        assert_eq!(render(&json!("a b"), false), "a b\n");
        assert_eq!(render(&json!("a b"), true), "\"a b\"\n");
        assert_eq!(render(&json!(8080), false), "8080\n");
        assert_eq!(render(&json!([1]), false), "[\n  1\n]\n");
    }
}
