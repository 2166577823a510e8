//! Secrets and parameters from SSM Parameter Store and Secrets Manager, resolved by the
//! metadata stage before it writes anything: what downstream stages and apps see are
//! ordinary parameters (and, for each secret, a credential file).
//!
//! - References (`{"ssm": NAME}`, `{"secretsmanager": ID, …}`; `refs.rs` has the rules)
//!   and imports by path (`bootstage.import`) are found first; with none, no AWS client is
//!   built and nothing is called.
//! - SSM names are de-duplicated and fetched 10 per `GetParameters` call (its limit),
//!   decrypted; a name with SSM's `:VERSION`/`:LABEL` suffix, or an ARN, gets a
//!   `GetParameter` call of its own, whose answer can only be that one version (a batch
//!   answer tells versions of one name apart only by its `Selector`, which not every
//!   implementation fills in); each import is paged through `GetParametersByPath` (10 a page) to its last
//!   `NextToken`; each distinct secret (id, version) is one `GetSecretValue`. Calls go to
//!   the region of an ARN, else the default (`AWS_REGION`, else the instance's), at most
//!   [`CONCURRENCY`] at once.
//! - Throttling and transient failures are retried with jittered backoff
//!   (`base::retry::THROTTLED`) until the stage's deadline. A missing parameter, secret or
//!   `json_key` fails with 65 naming the reference; a refused call with 77 naming the
//!   action; no answer by the deadline with 75. Nothing is written unless every reference
//!   resolved.
//! - Logs and errors name references and keys, never a value or a value's length.

pub mod refs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Map, Value};

use crate::aws::{self, Aws, AwsError, Failure, Kind};
use crate::base::exit::{ExitCode, ExitStatus};
use crate::base::retry::{self, Deadline};
use crate::state::envfile;
use refs::{Import, Imported, RefError, Reference, Target, dotted};

/// Calls in flight at once, over both services: a fleet booting together is what
/// throttles, so one instance stays modest.
pub const CONCURRENCY: usize = 4;
/// `GetParameters` takes at most 10 names.
const SSM_BATCH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error("{0} does not exist (or is not visible to this instance's role)")]
    Missing(String),
    #[error("{reference}: {why}")]
    Unusable { reference: String, why: String },
    #[error("{action} was refused: {why}")]
    Denied { action: &'static str, why: String },
    #[error("{action} failed: {why}")]
    Rejected { action: &'static str, why: String },
    #[error("{action} did not succeed before the deadline: {why}")]
    Unavailable { action: &'static str, why: String },
    /// Two sources for one credential file or one variable: refused, naming both.
    #[error("{first} and {second} both name {what}; rename one of them")]
    Collision {
        what: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl ExitStatus for SecretError {
    fn exit_code(&self) -> ExitCode {
        match self {
            SecretError::Ref(e) => e.exit_code(),
            SecretError::Missing(_)
            | SecretError::Collision { .. }
            | SecretError::Unusable { .. }
            | SecretError::Rejected { .. } => ExitCode::BadUserData,
            SecretError::Denied { .. } => ExitCode::NoPerm,
            SecretError::Unavailable { .. } => ExitCode::TempFail,
            SecretError::Aws(e) => e.exit_code(),
        }
    }
}

/// The parameters with every reference and import resolved.
#[derive(Debug, Default)]
pub struct Resolved {
    /// For params.json: `env: false` references hold `{"credential": "dotted.key"}`.
    pub json: Map<String, Value>,
    /// For params.env: `env: false` references are left out.
    pub env: Map<String, Value>,
    /// One file each under `credentials/`: every reference, every imported SecureString.
    pub credentials: Vec<(String, String)>,
    /// The variables that came from an import: not for the hooks' environment.
    pub imported: BTreeSet<String>,
}

/// Calls made, per API, for the log and the benchmark.
#[derive(Debug, Default)]
struct Calls {
    get_parameters: AtomicU32,
    get_parameter: AtomicU32,
    get_parameters_by_path: AtomicU32,
    get_secret_value: AtomicU32,
}

/// Resolves every reference and import in `params`. `instance_region` is the fallback
/// region after the environment's; `reserved` is what params.env needs beside the
/// parameters (the facts), which imports must leave room for.
pub async fn resolve(
    params: Map<String, Value>,
    instance_region: Option<String>,
    reserved: usize,
    deadline: Deadline,
) -> Result<Resolved, SecretError> {
    let references = refs::find(&params)?;
    let imports = refs::imports(&params)?;
    if references.is_empty() && imports.is_empty() {
        return Ok(Resolved {
            json: params.clone(),
            env: params,
            ..Resolved::default()
        });
    }
    let started = Instant::now();
    let services: &[&'static str] = &["SSM", "SECRETS_MANAGER"];
    let aws = Aws::load(instance_region, services, deadline.remaining()).await?;
    let calls = Calls::default();
    let fetched = fetch_all(&aws, &references, &imports, deadline, &calls).await?;

    let mut out = Resolved {
        json: params.clone(),
        env: params,
        ..Resolved::default()
    };
    let claims = place_references(&mut out, &references, &fetched)?;
    place_imports(&mut out, fetched.imported, claims, reserved)?;
    let n = |c: &AtomicU32| c.load(Ordering::Relaxed);
    tracing::info!(
        references = references.len(),
        imported = out.imported.len(),
        credentials = out.credentials.len(),
        get_parameters = n(&calls.get_parameters),
        get_parameter = n(&calls.get_parameter),
        get_parameters_by_path = n(&calls.get_parameters_by_path),
        get_secret_value = n(&calls.get_secret_value),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "resolved references and imports"
    );
    Ok(out)
}

/// Who names each credential file, and each variable an `env: false` reference keeps out
/// of params.env (what source): a second source of either is refused, never a silent
/// overwrite.
#[derive(Default)]
struct Claims {
    credential_of: BTreeMap<String, String>,
    hidden: BTreeMap<String, String>,
}

/// Each reference's value in its place: in params.json and params.env, or (`env: false`)
/// a `{"credential": KEY}` placeholder in params.json and left out of params.env; every
/// value a credential. Answers who claimed what, for the imports.
fn place_references(
    out: &mut Resolved,
    references: &[refs::Reference],
    fetched: &Fetched,
) -> Result<Claims, SecretError> {
    let mut claims = Claims::default();
    for reference in references {
        let value = fetched.value(&reference.target)?;
        let key = dotted(&reference.path);
        let source = format!("parameter {key:?} ({})", reference.target.describe());
        unclaimed(&claims.credential_of, &key, &source)?;
        claims.credential_of.insert(key.clone(), source.clone());
        match reference.env {
            true => {
                refs::set(&mut out.json, &reference.path, Value::String(value.clone()));
                refs::set(&mut out.env, &reference.path, Value::String(value.clone()));
            }
            false => {
                let placeholder = serde_json::json!({ "credential": key });
                refs::set(&mut out.json, &reference.path, placeholder);
                refs::remove(&mut out.env, &reference.path);
                let segments: Vec<&str> = reference.path.iter().map(String::as_str).collect();
                claims.hidden.insert(envfile::env_name(&segments), source);
            }
        }
        out.credentials.push((key, value));
    }
    Ok(claims)
}

/// The imported parameters placed where nothing else is: never over a variable
/// user-data sets or an earlier import took, never into a credential file another source
/// names (refused, 65), never past params.env's size; any other that cannot be placed is
/// left out with a warning.
fn place_imports(
    out: &mut Resolved,
    imported: Vec<Imported>,
    claims: Claims,
    reserved: usize,
) -> Result<(), SecretError> {
    let Claims {
        mut credential_of,
        hidden,
    } = claims;
    // The variables user-data sets: an import never takes one, however it spells the key
    // (`DB/HOST` beside user-data's `db.host`), so it can neither override nor collide.
    // Whoever writes under an import path must not be able to fail the boot either: a
    // parameter that cannot be exported is left out, with a warning naming it.
    let mut taken = envfile::names(&out.env);
    let mut room = envfile::MAX_FILE
        .saturating_sub(reserved)
        .saturating_sub(envfile::Env::from_params(&out.env).map_or(0, |e| e.size()));
    for item in imported {
        let key = dotted(&item.keys);
        let skip = |why: &str| tracing::warn!(parameter = item.name, "not imported: {why}");
        if let Some(why) = refs::import_refusal(&item.keys) {
            skip(&why);
            continue;
        }
        let source = format!("SSM parameter {:?} (imported)", item.name);
        let segments: Vec<&str> = item.keys.iter().map(String::as_str).collect();
        let name = envfile::env_name(&segments);
        // One credential file, two sources: refused (65), as a silent overwrite would be
        // worse than a failed boot.
        if item.secure {
            unclaimed(&credential_of, &key, &source)?;
        }
        if hidden.contains_key(&name) {
            skip(&format!(
                "its variable {name} is one an \"env\": false reference keeps out of params.env"
            ));
            continue;
        }
        let line = envfile::line_len(&name, &item.value);
        let unusable = envfile::unexportable(&name, &item.value)
            .or_else(|| {
                (item.secure && refs::check_credential_name(&item.keys).is_err())
                    .then(|| "its name cannot name a credential file".to_string())
            })
            .or_else(|| {
                (line > room).then(|| format!("params.env would pass {} bytes", envfile::MAX_FILE))
            });
        if let Some(why) = unusable {
            skip(&why);
            continue;
        }
        if taken.contains(&name)
            || !refs::merge_import(&mut out.json, &item.keys, Value::String(item.value.clone()))
        {
            tracing::info!(
                key,
                "user-data (or an earlier import) sets this key: the imported value is not used"
            );
            continue;
        }
        room -= line;
        taken.insert(name.clone());
        refs::merge_import(&mut out.env, &item.keys, Value::String(item.value.clone()));
        out.imported.insert(name);
        if item.secure {
            credential_of.insert(key.clone(), source);
            out.credentials.push((key, item.value));
        }
    }
    Ok(())
}

/// Refuses `source` as a second source of the credential file `key`, naming both.
fn unclaimed(
    credential_of: &BTreeMap<String, String>,
    key: &str,
    source: &str,
) -> Result<(), SecretError> {
    match credential_of.get(key) {
        Some(first) => Err(SecretError::Collision {
            what: format!("the credential file {key:?}"),
            first: first.clone(),
            second: source.to_string(),
        }),
        None => Ok(()),
    }
}

/// Everything fetched, by target, and the imported parameters in import order.
#[derive(Default)]
struct Fetched {
    ssm: BTreeMap<String, String>,
    /// (id, version_stage, version_id) → SecretString.
    secrets: BTreeMap<(String, Option<String>, Option<String>), String>,
    imported: Vec<Imported>,
}

impl Fetched {
    fn value(&self, target: &Target) -> Result<String, SecretError> {
        match target {
            Target::Ssm { name } => self
                .ssm
                .get(name)
                .cloned()
                .ok_or_else(|| SecretError::Missing(target.describe())),
            Target::Secret {
                id,
                version_stage,
                version_id,
                json_key,
            } => {
                let text = self
                    .secrets
                    .get(&(id.clone(), version_stage.clone(), version_id.clone()))
                    .ok_or_else(|| SecretError::Missing(target.describe()))?;
                match json_key {
                    None => Ok(text.clone()),
                    Some(key) => pick(text, key).ok_or_else(|| SecretError::Unusable {
                        reference: target.describe(),
                        why: format!("the secret is not a JSON object with the key {key:?}"),
                    }),
                }
            }
        }
    }
}

/// One field of a JSON secret: a string as it is, anything else as compact JSON.
fn pick(text: &str, key: &str) -> Option<String> {
    let doc: Map<String, Value> = serde_json::from_str(text).ok()?;
    match doc.get(key)? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The region an ARN names (`arn:aws:ssm:eu-west-1:…`), if the reference is an ARN.
pub fn arn_region(name: &str) -> Option<&str> {
    let mut parts = name.strip_prefix("arn:")?.split(':');
    let (_partition, _service, region) = (parts.next()?, parts.next()?, parts.next()?);
    (!region.is_empty()).then_some(region)
}

enum Task {
    Ssm {
        region: String,
        names: Vec<String>,
    },
    SsmOne {
        region: String,
        name: String,
    },
    Secret {
        key: (String, Option<String>, Option<String>),
    },
    Import(usize, Import),
}

enum Got {
    Ssm(Vec<(String, String)>),
    Secret((String, Option<String>, Option<String>), String),
    Import(usize, Vec<Imported>),
}

async fn fetch_all(
    aws: &Aws,
    references: &[Reference],
    imports: &[Import],
    deadline: Deadline,
    calls: &Calls,
) -> Result<Fetched, SecretError> {
    let mut by_region: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut secrets = BTreeSet::new();
    for reference in references {
        match &reference.target {
            Target::Ssm { name } => {
                let region = arn_region(name).unwrap_or(aws.region()).to_string();
                by_region.entry(region).or_default().insert(name.clone());
            }
            Target::Secret {
                id,
                version_stage,
                version_id,
                ..
            } => {
                secrets.insert((id.clone(), version_stage.clone(), version_id.clone()));
            }
        }
    }
    let mut tasks = Vec::new();
    for (region, names) in by_region {
        let (plain, single): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|n| !n.contains(':'));
        for name in single {
            tasks.push(Task::SsmOne {
                region: region.clone(),
                name,
            });
        }
        let names = plain;
        for chunk in names.chunks(SSM_BATCH) {
            tasks.push(Task::Ssm {
                region: region.clone(),
                names: chunk.to_vec(),
            });
        }
    }
    tasks.extend(secrets.into_iter().map(|key| Task::Secret { key }));
    tasks.extend(
        imports
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, import)| Task::Import(i, import)),
    );

    let results: Vec<Got> = futures_util::stream::iter(tasks)
        .map(|task| run(aws, task, deadline, calls))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut fetched = Fetched::default();
    let mut imports_done = BTreeMap::new();
    for got in results {
        match got {
            Got::Ssm(values) => fetched.ssm.extend(values),
            Got::Secret(key, value) => {
                fetched.secrets.insert(key, value);
            }
            Got::Import(index, values) => {
                imports_done.insert(index, values);
            }
        }
    }
    // Imports in the order written: the first that names a key wins over a later one.
    let mut seen = BTreeSet::new();
    for values in imports_done.into_values() {
        for item in values {
            if seen.insert(item.keys.clone()) {
                fetched.imported.push(item);
            }
        }
    }
    Ok(fetched)
}

/// One task's calls: a batch of SSM parameters, one parameter (a version or label
/// asked), one secret, or an import's pages.
async fn run(aws: &Aws, task: Task, deadline: Deadline, calls: &Calls) -> Result<Got, SecretError> {
    match task {
        Task::Ssm { region, names } => get_parameters(aws, &region, names, deadline, calls).await,
        Task::SsmOne { region, name } => get_parameter(aws, &region, name, deadline, calls).await,
        Task::Secret { key } => get_secret(aws, key, deadline, calls).await,
        Task::Import(index, import) => get_import(aws, index, import, deadline, calls).await,
    }
}

/// Up to [`SSM_BATCH`] SSM parameters in one `GetParameters`; any one missing fails the task,
/// naming each.
async fn get_parameters(
    aws: &Aws,
    region: &str,
    names: Vec<String>,
    deadline: Deadline,
    calls: &Calls,
) -> Result<Got, SecretError> {
    let client = aws.ssm(region);
    let action = "ssm:GetParameters";
    let answer = call(action, deadline, || {
        calls.get_parameters.fetch_add(1, Ordering::Relaxed);
        client
            .get_parameters()
            .set_names(Some(names.clone()))
            .with_decryption(true)
            .send()
    })
    .await
    .map_err(|f| failed(action, f))?;
    let missing: Vec<String> = answer
        .invalid_parameters()
        .iter()
        .map(|n| Target::Ssm { name: n.clone() }.describe())
        .collect();
    if !missing.is_empty() {
        return Err(SecretError::Missing(missing.join(", ")));
    }
    let mut values = Vec::new();
    for name in &names {
        let found = answer.parameters().iter().find(|p| p.name() == Some(name));
        match found.and_then(|p| p.value()) {
            Some(value) => values.push((name.clone(), value.to_string())),
            None => {
                return Err(SecretError::Missing(
                    Target::Ssm { name: name.clone() }.describe(),
                ));
            }
        }
    }
    Ok(Got::Ssm(values))
}

/// One SSM parameter by `GetParameter` (a `:version` or `:label` selector, which
/// `GetParameters` does not take).
async fn get_parameter(
    aws: &Aws,
    region: &str,
    name: String,
    deadline: Deadline,
    calls: &Calls,
) -> Result<Got, SecretError> {
    let client = aws.ssm(region);
    let reference = Target::Ssm { name: name.clone() }.describe();
    let action = "ssm:GetParameter";
    let answer = call(action, deadline, || {
        calls.get_parameter.fetch_add(1, Ordering::Relaxed);
        client
            .get_parameter()
            .name(&name)
            .with_decryption(true)
            .send()
    })
    .await
    .map_err(
        |f| match f.is(&["ParameterNotFound", "ParameterVersionNotFound"]) {
            true => SecretError::Missing(reference.clone()),
            false => failed(action, f),
        },
    )?;
    let value = answer
        .parameter()
        .and_then(|p| p.value())
        .ok_or(SecretError::Missing(reference))?;
    Ok(Got::Ssm(vec![(name, value.to_string())]))
}

/// One secret's `SecretString` (by id, stage and version), from the region its ARN names.
async fn get_secret(
    aws: &Aws,
    key: (String, Option<String>, Option<String>),
    deadline: Deadline,
    calls: &Calls,
) -> Result<Got, SecretError> {
    let (id, stage, version) = &key;
    let region = arn_region(id).unwrap_or(aws.region()).to_string();
    let client = aws.secretsmanager(&region);
    let action = "secretsmanager:GetSecretValue";
    let reference = Target::Secret {
        id: id.clone(),
        version_stage: stage.clone(),
        version_id: version.clone(),
        json_key: None,
    }
    .describe();
    let answer = call(action, deadline, || {
        calls.get_secret_value.fetch_add(1, Ordering::Relaxed);
        client
            .get_secret_value()
            .secret_id(id)
            .set_version_stage(stage.clone())
            .set_version_id(version.clone())
            .send()
    })
    .await
    .map_err(|f| match f.is(&["ResourceNotFoundException"]) {
        true => SecretError::Missing(reference.clone()),
        false => failed(action, f),
    })?;
    let text = answer
        .secret_string()
        .ok_or_else(|| SecretError::Unusable {
            reference,
            why: "it holds binary data (SecretBinary); only a SecretString can be a parameter"
                .into(),
        })?;
    Ok(Got::Secret(key.clone(), text.to_string()))
}

/// An import's parameters below its path, every page of `GetParametersByPath`, each
/// named by its keys below the path.
async fn get_import(
    aws: &Aws,
    index: usize,
    import: Import,
    deadline: Deadline,
    calls: &Calls,
) -> Result<Got, SecretError> {
    let client = aws.ssm(aws.region());
    let action = "ssm:GetParametersByPath";
    let prefix = match import.ssm_path.ends_with('/') {
        true => import.ssm_path.clone(),
        false => format!("{}/", import.ssm_path),
    };
    let mut values = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = call(action, deadline, || {
            calls.get_parameters_by_path.fetch_add(1, Ordering::Relaxed);
            client
                .get_parameters_by_path()
                .path(&import.ssm_path)
                .recursive(import.recursive)
                .with_decryption(true)
                .max_results(10)
                .set_next_token(token.clone())
                .send()
        })
        .await
        .map_err(|f| failed(action, f))?;
        for p in page.parameters() {
            let (Some(name), Some(value)) = (p.name(), p.value()) else {
                continue;
            };
            let keys: Vec<String> = name
                .strip_prefix(&prefix)
                .unwrap_or(name)
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let secure = p.r#type() == Some(&aws_sdk_ssm::types::ParameterType::SecureString);
            values.push(Imported {
                name: name.to_string(),
                keys,
                value: value.to_string(),
                secure,
            });
        }
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok(Got::Import(index, values))
}

/// Error codes that mean the KMS key refused to decrypt.
const KMS_REFUSED: &[&str] = &[
    "DecryptionFailure",
    "KMSAccessDeniedException",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
    "InvalidKeyId",
];

/// Sends one request under the throttling policy until the deadline (`aws::call`).
async fn call<T, E, F, Fut>(action: &'static str, deadline: Deadline, op: F) -> Result<T, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let service = action.split(':').next().unwrap_or_default();
    let service = if service == "ssm" {
        "SSM"
    } else {
        "Secrets Manager"
    };
    aws::call(service, action, retry::THROTTLED, deadline, op).await
}

/// What a failed call means for the reference: a KMS key that refused to decrypt is
/// `kms:Decrypt` refused, whatever the call; a refusal 77, a "no" 65, no answer by the
/// deadline 75.
fn failed(action: &'static str, f: Failure) -> SecretError {
    let why = f.message.clone();
    match f.kind {
        Kind::Refused | Kind::Permanent if f.is(KMS_REFUSED) => SecretError::Denied {
            action: "kms:Decrypt",
            why,
        },
        Kind::Refused => SecretError::Denied { action, why },
        Kind::Permanent => SecretError::Rejected { action, why },
        Kind::Throttled | Kind::Transient => SecretError::Unavailable { action, why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_by_kind_and_code_and_kms_is_named() {
        let f = |kind, code: &str| Failure::new(kind, Some(code), format!("{code}: said"));
        let action = "ssm:GetParameters";
        let cases = [
            (
                f(Kind::Permanent, "KMSAccessDeniedException"),
                "kms:Decrypt was refused: KMSAccessDeniedException: said",
                77,
            ),
            (
                f(Kind::Refused, "AccessDeniedException"),
                "ssm:GetParameters was refused: AccessDeniedException: said",
                77,
            ),
            (
                f(Kind::Permanent, "ValidationException"),
                "ssm:GetParameters failed: ValidationException: said",
                65,
            ),
            (
                f(Kind::Throttled, "ThrottlingException"),
                "ssm:GetParameters did not succeed before the deadline: ThrottlingException: said",
                75,
            ),
        ];
        for (failure, message, code) in cases {
            let e = failed(action, failure);
            assert_eq!(
                (e.to_string().as_str(), e.exit_code() as i32),
                (message, code)
            );
        }
    }

    #[test]
    fn arns_name_their_region_and_json_keys_pick_fields() {
        assert_eq!(
            arn_region("arn:aws:ssm:eu-west-1:123:parameter/a/b:3"),
            Some("eu-west-1")
        );
        assert_eq!(
            arn_region("arn:aws:secretsmanager:us-east-2:1:secret:db-AbCdEf"),
            Some("us-east-2")
        );
        assert_eq!(arn_region("/shop/db"), None);
        assert_eq!(
            pick(r#"{"u":"x","n":5,"o":{"a":1}}"#, "u").as_deref(),
            Some("x")
        );
        assert_eq!(
            pick(r#"{"u":"x","n":5,"o":{"a":1}}"#, "n").as_deref(),
            Some("5")
        );
        assert_eq!(
            pick(r#"{"u":"x","n":5,"o":{"a":1}}"#, "o").as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(pick(r#"{"u":"x"}"#, "missing"), None);
        assert_eq!(pick("not json", "u"), None);
    }
}
