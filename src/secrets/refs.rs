//! References in the parameters, and imports by path: finding them, checking their shape,
//! and putting the resolved values in their place. No network here.
//!
//! The rule for an object anywhere in the parameters (arrays included):
//! - it has the key `ssm` → an SSM parameter reference; it may also have `env`;
//! - it has the key `secretsmanager` → a Secrets Manager reference; it may also have
//!   `json_key`, `version_stage`, `version_id`, `env`;
//! - neither → an ordinary object.
//!
//! A reference object with any other key, with both `ssm` and `secretsmanager`, or with a
//! value of the wrong type is refused, naming the parameter and the key: an object that
//! looks half like a reference is a mistake to report, not a guess to make. A plain
//! string is never reinterpreted.
//!
//! `bootstage.import: [{"ssm_path": "/shop/staging/", "recursive": true}]` brings every
//! parameter under the path, named by its path below the prefix (`db/password` →
//! `db.password`). A key that user-data sets wins over an import. An import never sets
//! bootstage's own settings nor a variable that steers an interpreter, the loader or a
//! tool ([`import_refusal`]): such a parameter is left out with a warning naming it.

use serde_json::{Map, Value};

use crate::base::exit::{ExitCode, ExitStatus};
use crate::settings;
pub use crate::settings::Import;
use crate::state::envfile::{SETTINGS_KEY, env_name, steering};

/// A parameter's place in the parameters: object keys, and list indexes as numbers.
pub type Path = Vec<String>;

/// One reference, where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub path: Path,
    pub target: Target,
    /// `false`: only a credential file; not in params.env nor params.json.
    pub env: bool,
}

/// What a reference points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A name, an ARN, or either with SSM's `:VERSION` / `:LABEL` suffix.
    Ssm { name: String },
    Secret {
        id: String,
        version_stage: Option<String>,
        version_id: Option<String>,
        json_key: Option<String>,
    },
}

impl Target {
    /// How the reference is named in messages: what user-data wrote, never a value.
    pub fn describe(&self) -> String {
        match self {
            Target::Ssm { name } => format!("SSM parameter {name:?}"),
            Target::Secret {
                id,
                version_stage,
                version_id,
                json_key,
            } => {
                let mut text = format!("secret {id:?}");
                if let Some(v) = version_id {
                    text.push_str(&format!(" version {v:?}"));
                }
                if let Some(v) = version_stage {
                    text.push_str(&format!(" stage {v:?}"));
                }
                if let Some(k) = json_key {
                    text.push_str(&format!(" key {k:?}"));
                }
                text
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("parameter {path}: {why}")]
    Shape { path: String, why: String },
    #[error("{0}")]
    Import(String),
    #[error(
        "parameter {0} cannot name a credential file (a '/', an empty or a '.'/'..' segment, a control character, or over 255 bytes)"
    )]
    CredentialName(String),
}

impl ExitStatus for RefError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::BadUserData
    }
}

/// A path as messages and credential files name it: `db.password`, `hosts.0`.
pub fn dotted(path: &[String]) -> String {
    path.join(".")
}

const SSM_KEYS: &[&str] = &["ssm", "env"];
const SECRET_KEYS: &[&str] = &[
    "secretsmanager",
    "json_key",
    "version_stage",
    "version_id",
    "env",
];

/// Every reference in `params`, in document order.
pub fn find(params: &Map<String, Value>) -> Result<Vec<Reference>, RefError> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    for (key, value) in params {
        path.push(key.clone());
        walk(&mut path, value, &mut found)?;
        path.pop();
    }
    Ok(found)
}

fn walk(path: &mut Path, value: &Value, found: &mut Vec<Reference>) -> Result<(), RefError> {
    // A sync entry's `"from": {"ssm": …}` is a release pointer, read by each sync pass.
    if settings::sync::is_release_pointer(path) {
        return Ok(());
    }
    match value {
        Value::Object(map) if map.contains_key("ssm") || map.contains_key("secretsmanager") => {
            found.push(parse(path, map)?);
        }
        Value::Object(map) => {
            for (key, value) in map {
                path.push(key.clone());
                walk(path, value, found)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(path, value, found)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse(path: &Path, map: &Map<String, Value>) -> Result<Reference, RefError> {
    let shape = |why: String| RefError::Shape {
        path: format!("{:?}", dotted(path)),
        why,
    };
    let (kind, allowed) = match (map.contains_key("ssm"), map.contains_key("secretsmanager")) {
        (true, true) => {
            return Err(shape(
                "a reference has either \"ssm\" or \"secretsmanager\", not both".into(),
            ));
        }
        (true, false) => ("ssm", SSM_KEYS),
        _ => ("secretsmanager", SECRET_KEYS),
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(shape(format!(
            "a {kind:?} reference cannot have the key {key:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    let text = |key: &str| -> Result<Option<String>, RefError> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(shape(format!(
                "{key:?} in a reference must be a non-empty string"
            ))),
        }
    };
    let env = match map.get("env") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(shape("\"env\" in a reference must be true or false".into())),
    };
    let target = match kind {
        "ssm" => Target::Ssm {
            name: text("ssm")?.unwrap_or_default(),
        },
        _ => Target::Secret {
            id: text("secretsmanager")?.unwrap_or_default(),
            version_stage: text("version_stage")?,
            version_id: text("version_id")?,
            json_key: text("json_key")?,
        },
    };
    let reference = Reference {
        path: path.clone(),
        target,
        env,
    };
    check_credential_name(&reference.path)?;
    Ok(reference)
}

/// A credential file is named by the dotted path: it must be one plain file name.
pub fn check_credential_name(path: &[String]) -> Result<(), RefError> {
    let name = dotted(path);
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control)
        || path.iter().any(String::is_empty);
    match bad {
        true => Err(RefError::CredentialName(format!("{name:?}"))),
        false => Ok(()),
    }
}

/// `bootstage.import`, checked.
pub fn imports(params: &Map<String, Value>) -> Result<Vec<Import>, RefError> {
    match params.get(SETTINGS_KEY).and_then(|b| b.get("import")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(list) => settings::sync::imports(list, &format!("{SETTINGS_KEY}.import"))
            .map_err(|e| RefError::Import(e.0)),
    }
}

/// Puts `value` at `path`, replacing the reference object there.
pub fn set(params: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(mut node) = params.get_mut(first) else {
        return;
    };
    for segment in rest {
        let next = match node {
            Value::Object(map) => map.get_mut(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return,
        }
    }
    *node = value;
}

/// Removes the value at `path` (an `env: false` reference, from the env's copy).
pub fn remove(params: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if parents.is_empty() {
        params.remove(last);
        return;
    }
    let mut node = params.get_mut(&parents[0]);
    for segment in &parents[1..] {
        node = match node {
            Some(Value::Object(map)) => map.get_mut(segment),
            Some(Value::Array(items)) => {
                segment.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            }
            _ => None,
        };
    }
    match node {
        Some(Value::Object(map)) => {
            map.remove(last);
        }
        // A list keeps its length: the element becomes null.
        Some(Value::Array(items)) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

/// One parameter an import brought: its SSM name, its place below the import's prefix,
/// its value, and whether it was a SecureString.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub name: String,
    pub keys: Path,
    pub value: String,
    pub secure: bool,
}

/// Why an imported parameter is left out, if it is: whoever can write under an import's
/// path (a developer, a CI role) is not trusted with what root runs. So an import never
/// sets bootstage's own settings (`bootstage…` in any case, with any separator that maps
/// to it) nor a variable that steers an interpreter, the loader or a tool
/// (`envfile::steering`), nor a reserved one.
pub fn import_refusal(keys: &[String]) -> Option<String> {
    let segments: Vec<&str> = keys.iter().map(String::as_str).collect();
    // `bootstage`, `Bootstage`, `BOOTSTAGE_NOTIFY`, `bootstage.notify`, `bootstage-x` …
    let first = env_name(&segments[..segments.len().min(1)]);
    if first == "BOOTSTAGE" || first.starts_with("BOOTSTAGE_") {
        return Some(
            "it would set bootstage's own settings, which only user-data and the image configure"
                .into(),
        );
    }
    let name = env_name(&segments);
    steering(&name).map(|why| format!("its variable {name} is reserved for {why}"))
}

/// Adds an imported value at `keys` unless user-data already sets that key or a parent
/// of it to something else; returns `false` (and adds nothing) then.
pub fn merge_import(params: &mut Map<String, Value>, keys: &[String], value: Value) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut map = params;
    for key in parents {
        let entry = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        match entry {
            Value::Object(inner) => map = inner,
            _ => return false,
        }
    }
    if map.contains_key(last) {
        return false;
    }
    map.insert(last.clone(), value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn references_are_found_anywhere_and_plain_strings_are_left_alone() {
        let params = obj(json!({
            "db": {"password": {"ssm": "/shop/db-password"}, "host": "ssm"},
            "api": {"secretsmanager": "shop/api", "json_key": "token", "env": false},
            "hosts": ["a", {"ssm": "arn:aws:ssm:eu-west-1:1:parameter/h:3"}],
        }));
        let found = find(&params).unwrap();
        assert_eq!(
            found,
            [
                Reference {
                    path: vec!["db".into(), "password".into()],
                    target: Target::Ssm {
                        name: "/shop/db-password".into()
                    },
                    env: true
                },
                Reference {
                    path: vec!["api".into()],
                    target: Target::Secret {
                        id: "shop/api".into(),
                        version_stage: None,
                        version_id: None,
                        json_key: Some("token".into())
                    },
                    env: false
                },
                Reference {
                    path: vec!["hosts".into(), "1".into()],
                    target: Target::Ssm {
                        name: "arn:aws:ssm:eu-west-1:1:parameter/h:3".into()
                    },
                    env: true
                },
            ]
        );
    }

    #[test]
    fn ambiguous_shapes_are_refused_by_key() {
        let err = |v: Value| find(&obj(v)).unwrap_err().to_string();
        assert_eq!(
            err(json!({"db": {"ssm": "/x", "region": "eu-west-1"}})),
            "parameter \"db\": a \"ssm\" reference cannot have the key \"region\" (allowed: ssm, env)"
        );
        assert_eq!(
            err(json!({"db": {"ssm": "/x", "secretsmanager": "y"}})),
            "parameter \"db\": a reference has either \"ssm\" or \"secretsmanager\", not both"
        );
        assert_eq!(
            err(json!({"db": {"ssm": {"enabled": true}}})),
            "parameter \"db\": \"ssm\" in a reference must be a non-empty string"
        );
        assert_eq!(
            err(json!({"db": {"secretsmanager": "x", "env": "no"}})),
            "parameter \"db\": \"env\" in a reference must be true or false"
        );
        assert_eq!(
            err(json!({"a/b": {"ssm": "/x"}})),
            "parameter \"a/b\" cannot name a credential file (a '/', an empty or a '.'/'..' segment, a control character, or over 255 bytes)"
        );
    }

    #[test]
    fn values_go_in_place_and_imports_never_override() {
        let mut params = obj(json!({"db": {"password": {"ssm": "/x"}}, "l": [1, {"ssm": "/y"}]}));
        set(&mut params, &["db".into(), "password".into()], json!("v"));
        set(&mut params, &["l".into(), "1".into()], json!("w"));
        assert_eq!(
            Value::Object(params.clone()),
            json!({"db": {"password": "v"}, "l": [1, "w"]})
        );
        remove(&mut params, &["db".into(), "password".into()]);
        remove(&mut params, &["l".into(), "1".into()]);
        assert_eq!(
            Value::Object(params.clone()),
            json!({"db": {}, "l": [1, null]})
        );

        let mut params = obj(json!({"db": {"host": "mine"}, "port": 1}));
        assert!(merge_import(
            &mut params,
            &["db".into(), "user".into()],
            json!("u")
        ));
        assert!(!merge_import(
            &mut params,
            &["db".into(), "host".into()],
            json!("theirs")
        ));
        assert!(!merge_import(
            &mut params,
            &["port".into(), "x".into()],
            json!("y")
        ));
        assert_eq!(
            Value::Object(params),
            json!({"db": {"host": "mine", "user": "u"}, "port": 1})
        );
    }

    #[test]
    fn an_import_never_sets_settings_nor_a_steering_variable() {
        let refusal = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            import_refusal(&keys)
        };
        let settings = Some(
            "it would set bootstage's own settings, which only user-data and the image configure"
                .to_string(),
        );
        for keys in [
            &["bootstage", "notify", "command"][..],
            &["Bootstage", "sync"],
            &["BOOTSTAGE_SYNC"],
            &["bootstage.watch", "sqs"],
            &["bootstage-x"],
            &["bootstage"],
        ] {
            assert_eq!(refusal(keys), settings, "{keys:?}");
        }
        for (keys, name) in [
            (&["PERL5OPT"][..], "PERL5OPT"),
            (&["node", "options"], "NODE_OPTIONS"),
            (&["ld", "preload"], "LD_PRELOAD"),
            (&["PYTHONPATH"], "PYTHONPATH"),
            (&["git", "dir"], "GIT_DIR"),
            (&["aws", "region"], "AWS_REGION"),
            (&["https_proxy"], "HTTPS_PROXY"),
            (&["path"], "PATH"),
        ] {
            let why = refusal(keys).unwrap_or_default();
            assert!(
                why.starts_with(&format!("its variable {name} is reserved for ")),
                "{why}"
            );
        }
        for keys in [
            &["db", "host"][..],
            &["bootstager"],
            &["app", "bootstage"],
            &["app", "perl"],
        ] {
            assert_eq!(refusal(keys), None, "{keys:?}");
        }
    }

    #[test]
    fn imports_are_checked() {
        let ok = obj(json!({"bootstage": {"import": [{"ssm_path": "/a/", "recursive": true}]}}));
        assert_eq!(
            imports(&ok).unwrap(),
            [Import {
                ssm_path: "/a/".into(),
                recursive: true
            }]
        );
        let bad = obj(json!({"bootstage": {"import": [{"ssm_path": "a/"}]}}));
        assert_eq!(
            imports(&bad).unwrap_err().to_string(),
            "bootstage.import[0].ssm_path: \"a/\" must start with '/'"
        );
        let unknown = obj(json!({"bootstage": {"import": [{"path": "/a"}]}}));
        assert!(imports(&unknown).is_err());
    }
}
