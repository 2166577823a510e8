//! `bootstage validate [FILE|-]`: check user-data before it reaches an instance, as the
//! metadata stage would read it, without a network call: decode it (JSON, base64, gzip),
//! check every reference's shape and every `bootstage.*` setting against the schema
//! (`settings`), flatten it as `params.env` would be, and print the variable names that
//! would be exported (never a value). Exit 0 when it would boot, 65 when it would not.
//! Operators run it in CI before publishing a launch template version.
//!
//! Offline, nothing is resolved: a reference is exported under its own name (unless
//! `"env": false`), an import's parameters are unknown (it is named instead), and a
//! reference inside bootstage's own settings stands for a URL-shaped string.
//!
//! With `--online`, once the offline checks pass, [`online`] asks AWS whether each thing
//! named exists and may be read (metadata only, no value fetched), one line per check.

pub mod online;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::base::exit::ExitCode;
use crate::imds::userdata;
use crate::secrets::{SecretError, refs};
use crate::settings::{self, Bootstage};
use crate::stage::error::{Error, Result};
use crate::state::envfile::{Env, SETTINGS_KEY};

/// What to check: a file, or standard input.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` or `-`: standard input.
    pub file: Option<PathBuf>,
    /// Also ask AWS whether what the user-data names exists and may be read.
    pub online: bool,
    /// With `online`: the bound on all of its calls together.
    pub timeout: Duration,
}

/// `--timeout`'s default.
pub const DEFAULT_TIMEOUT: &str = "30s";

/// What a reference in bootstage's settings stands for offline.
const PLACEHOLDER: &str = "https://resolved-at-boot.invalid/";

/// The offline checks, then (with `online`) the online ones; the exit code of the first
/// online check that failed.
pub async fn run(args: &Settings) -> Result<ExitCode> {
    let (raw, name) = match args.file.as_deref() {
        None => (read_stdin()?, "standard input".to_string()),
        Some(p) if p.as_os_str() == "-" => (read_stdin()?, "standard input".to_string()),
        Some(path) => (
            std::fs::read(path).map_err(|source| Error::Read {
                path: path.into(),
                source,
            })?,
            path.display().to_string(),
        ),
    };
    let params = userdata::decode(&raw)?;
    let references = refs::find(&params).map_err(SecretError::from)?;
    let imports = refs::imports(&params).map_err(SecretError::from)?;
    let mut offline = params.clone();
    if let Some(Value::Object(own)) = offline.get_mut(SETTINGS_KEY) {
        stand_in(own);
    }
    let settings = Bootstage::from_params(&offline)?;
    for warning in settings::warnings(&params) {
        tracing::warn!("{warning}");
    }
    // params.env as the boot would write it, a reference standing for its value.
    let mut env_params = params.clone();
    for reference in &references {
        match reference.env {
            true => refs::set(
                &mut env_params,
                &reference.path,
                Value::String(String::new()),
            ),
            false => refs::remove(&mut env_params, &reference.path),
        }
    }
    let env = Env::from_params(&env_params)?;
    let mut out = String::new();
    for (name, _) in env.iter() {
        out.push_str(name);
        out.push('\n');
    }
    print!("{out}");
    eprintln!(
        "{name}: valid; {} variables, {} references, {} imports{}",
        env.len(),
        references.len(),
        imports.len(),
        match imports.is_empty() {
            true => String::new(),
            false => format!(
                " (their parameters are known only at boot: {})",
                imports
                    .iter()
                    .map(|i| i.ssm_path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    );
    if !args.online {
        return Ok(ExitCode::Ok);
    }
    let tasks = online::tasks(&references, &settings, PLACEHOLDER);
    let outcomes = online::check(tasks, args.timeout)
        .await
        .map_err(|e| Error::Stage(Box::new(e)))?;
    let count = |f: fn(online::Verdict) -> bool| outcomes.iter().filter(|o| f(o.verdict)).count();
    let code = online::exit_code(&outcomes);
    eprintln!(
        "{name}: online: {} checks, {} ok, {} skipped, {} failed{}",
        outcomes.len(),
        count(|v| v == online::Verdict::Ok),
        count(|v| v == online::Verdict::Skipped),
        count(|v| !matches!(v, online::Verdict::Ok | online::Verdict::Skipped)),
        match code {
            ExitCode::Ok => String::new(),
            code => format!(" (exit {})", code as i32),
        }
    );
    Ok(code)
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(userdata::MAX_RAW as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|source| Error::Read {
            path: "standard input".into(),
            source,
        })?;
    Ok(raw)
}

/// Replaces every reference in bootstage's settings with [`PLACEHOLDER`].
fn stand_in(map: &mut Map<String, Value>) {
    for (key, value) in map.iter_mut() {
        match value {
            // A sync entry's `"from": {"ssm": …}` is a release pointer, not a reference:
            // the sync settings read it as it is (and the boot leaves it to each pass).
            Value::Object(inner) if key == "from" && inner.contains_key("ssm") => {}
            Value::Object(inner)
                if inner.contains_key("ssm") || inner.contains_key("secretsmanager") =>
            {
                *value = Value::String(PLACEHOLDER.into());
            }
            Value::Object(inner) => stand_in(inner),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        let mut wrapper = Map::from_iter([(
                            "x".to_string(),
                            Value::Object(std::mem::take(inner)),
                        )]);
                        stand_in(&mut wrapper);
                        *item = wrapper.remove("x").unwrap_or(Value::Null);
                    }
                }
            }
            _ => {}
        }
    }
}
