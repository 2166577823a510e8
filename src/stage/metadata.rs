//! The `metadata` stage: from IMDS (or a user-data file) to `params.json`,
//! `instance.json` and `params.env` in the state dir, then READY.
//!
//! The user-data and facts come from a provider (`imds::provider`: EC2's IMDS by default,
//! Compute Engine's metadata server, Azure's IMDS, or OpenStack's metadata service or
//! config drive); nothing above this stage knows which.
//!
//! A boot, step by step:
//! 1. take the state dir's lock (creating the dir 0700);
//! 2. fetch user-data, polling while it is not there yet, and the facts, concurrently;
//! 3. decode user-data into the parameters object and flatten it, with the facts, into
//!    environment variables;
//! 4. write `instance.json` atomically and the values (`params.json`, `params.env`,
//!    `hooks.env`, `credentials/`) as one set (`state::values`: built beside the current
//!    set, then made current by one rename);
//! 5. on Azure with `BOOTSTAGE_AZURE_REPORT_READY=true`, report ready to the wireserver
//!    (`imds::wireserver`), as an agent would;
//! 6. return a summary; the caller tells systemd READY=1 (run in-process by a later stage,
//!    this stage must not declare that stage ready).
//!
//! Nothing is written until every step before it has succeeded, so a failed run leaves the
//! previous files as they were.
//!
//! [`Refresher`] is the same resolution for watch mode (`s3sync::watch`): the parameters
//! as user-data gave them, read once, resolved again on demand against this boot's facts;
//! a changed set is swapped in whole, an unchanged one writes nothing.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::events::Names;
use crate::imds::facts::Facts;
use crate::imds::provider::{self, Dmi, Provider};
use crate::imds::userdata::{self, DecodeError};
use crate::imds::{self, Client};
use crate::secrets;
use crate::settings::{self, Bootstage};
use crate::stage::error::{Error, Result};
use crate::state::StateDir;
use crate::state::atomic;
use crate::state::envfile::Env;
use crate::state::status::{self, Stage};
use crate::state::values::{self, Written};

/// What the metadata stage needs to know; `cli.rs` fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The metadata service's base URL; `None`: the provider's environment variables, else
    /// its documented address.
    pub imds_endpoint: Option<String>,
    /// `--provider` (`aws`, `gcp`, `azure`, `openstack`); `None`: `BOOTSTAGE_PROVIDER`,
    /// else the DMI, else aws.
    pub provider: Option<String>,
    /// Where the DMI strings are read (`/sys/class/dmi/id`; a test gives its own).
    pub dmi_root: PathBuf,
    /// Refuse IMDSv1.
    pub imds_v2_only: bool,
    /// The stage's overall deadline.
    pub timeout: Duration,
    /// How long a user-data 404 counts as "not there yet"; `None`: the default.
    pub user_data_wait: Option<Duration>,
    /// Bound on each HTTP request.
    pub request_timeout: Duration,
    /// Boot with empty parameters when there is no user-data.
    pub allow_empty: bool,
    /// Read user-data from this file instead of IMDS.
    pub user_data_file: Option<PathBuf>,
    /// `NAME=VALUE` facts for `user_data_file`.
    pub facts: Vec<String>,
    /// The image's own settings files (`notify` → `/etc/bootstage/notify.json` …), checked
    /// with the parameters so a typo there fails the first stage, not a later unit.
    pub image_files: Vec<(&'static str, PathBuf)>,
}

pub const DEFAULT_TIMEOUT: &str = "90s";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "2s";
/// The user-data grace period when none is given (capped by the timeout).
pub const DEFAULT_USER_DATA_WAIT: Duration = Duration::from_secs(30);

impl Settings {
    pub fn user_data_wait(&self) -> Duration {
        self.user_data_wait
            .unwrap_or(DEFAULT_USER_DATA_WAIT.min(self.timeout))
    }

    /// Whether the caller asked for the stage's input by a flag (a user-data file, facts,
    /// an endpoint, a policy): what a one-off `s3-sync --from` takes as "run it first".
    pub fn names_a_source(&self) -> bool {
        self.user_data_file.is_some()
            || !self.facts.is_empty()
            || self.imds_endpoint.is_some()
            || self.provider.is_some()
            || self.imds_v2_only
            || self.allow_empty
            || self.user_data_wait.is_some()
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("--timeout and --request-timeout must be above zero".into());
        }
        if self.user_data_wait.is_some_and(|wait| wait > self.timeout) {
            return Err("--user-data-wait must not exceed --timeout".into());
        }
        if !self.facts.is_empty() && self.user_data_file.is_none() {
            return Err("--fact goes with --user-data-file (on EC2, facts come from IMDS)".into());
        }
        Ok(())
    }
}

/// Checks each of the image's settings files that exists against its section's schema.
fn check_image_files(files: &[(&'static str, PathBuf)]) -> Result<()> {
    for (section, path) in files {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        let origin = path.display().to_string();
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| settings::SettingsError(format!("{origin}: not JSON ({e})")))?;
        settings::check_image_file(section, &value, &origin)?;
    }
    Ok(())
}

/// For a later stage run by hand: runs this stage in-process when its outputs are missing,
/// or always with `refresh`. Sends no READY (the caller is another stage).
pub async fn ensure(
    state: &StateDir,
    args: &Settings,
    refresh: bool,
    notifier: Notifier,
) -> Result<()> {
    let present = [
        state.params_json(),
        state.instance_json(),
        state.params_env(),
        state.hooks_env(),
    ]
    .iter()
    .all(|p| state.exists(p));
    if refresh || !present {
        tracing::info!("parameters missing or --refresh: running the metadata stage first");
        run(state, args, notifier).await?;
    }
    Ok(())
}

/// The stage, with its status record (`status.rs`). Returns the READY summary.
pub async fn run(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<String> {
    status::track(state, Stage::Metadata, fetch(state, args, notifier)).await
}

async fn fetch(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<String> {
    args.validate().map_err(Error::Usage)?;
    let deadline = Deadline::after(args.timeout);
    let _lock = state.lock(deadline).await?;

    let (raw, facts) = match &args.user_data_file {
        Some(path) => (
            read_user_data_file(path)?,
            Facts::from_flags(&args.facts).map_err(Error::Usage)?,
        ),
        None => from_provider(chosen_provider(args)?, args, deadline, notifier, true).await?,
    };

    let params = decode(raw, args, deadline)?;
    notifier.status("resolving references");
    let rendered = render(params, &facts, deadline, true).await?;
    check_image_files(&args.image_files)?;
    let missing: Vec<&str> = facts
        .named()
        .iter()
        // Outside an auto scaling group there is no target lifecycle state, and a project,
        // an instance name or a resource group only some providers have: not gaps.
        .filter(|f| {
            f.1.is_none()
                && !matches!(
                    f.0,
                    "target-lifecycle-state" | "project-id" | "instance-name" | "resource-group"
                )
        })
        .map(|f| f.0)
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            source = facts.source,
            missing = missing.join(","),
            "some instance facts are absent"
        );
    }

    let instance_json = pretty(&serde_json::to_value(&facts).expect("facts serialize"));
    // A bad report setting is refused before anything is written.
    let report_to = match facts.source.as_str() {
        "azure" => azure_ready_endpoint()?,
        _ => None,
    };
    // The values built first, then the facts, then the values made current: a failure
    // before the last step leaves the previous values current.
    let staged = values::stage(state.root(), &rendered.set).map_err(write_error)?;
    atomic::write_file(&state.instance_json(), instance_json.as_bytes()).map_err(write_error)?;
    staged.commit().map_err(write_error)?;
    // The values are current and the boot goes on: a report that fails is said, as
    // cloud-init says it, in the log and in the ready notice's status (`systemctl
    // status`), and Azure shows the VM as not provisioned.
    let mut unreported = "";
    if let Some(endpoint) = report_to {
        match imds::wireserver::report_ready(&endpoint, args.request_timeout, deadline).await {
            Ok(()) => tracing::info!(endpoint, "reported ready to Azure's wireserver"),
            Err(e) => {
                tracing::error!(
                    endpoint,
                    "could not report ready to Azure's wireserver: {e}; Azure will not show this VM as provisioned"
                );
                unreported = "; not reported ready to Azure's wireserver (the log says why)";
            }
        }
    }

    tracing::info!(
        variables = rendered.variables,
        credentials = rendered.set.credentials.len(),
        facts = facts.source,
        dir = %state.root().display(),
        elapsed_ms = deadline.elapsed().as_millis() as u64,
        "wrote params.json, instance.json, params.env, hooks.env"
    );
    Ok(format!(
        "parameters ready: {} variables{unreported}",
        rendered.variables
    ))
}

fn write_error((path, source): (PathBuf, std::io::Error)) -> Error {
    Error::Write { path, source }
}

/// User-data (`None`: there is none) as the parameters object.
fn decode(raw: Option<Vec<u8>>, args: &Settings, deadline: Deadline) -> Result<Map<String, Value>> {
    Ok(match raw {
        Some(raw) => match userdata::decode(&raw) {
            // MIME with no part of bootstage's is no user-data for bootstage.
            Err(DecodeError::NoParameters) if args.allow_empty => {
                tracing::warn!(
                    "no MIME part of the user-data is bootstage's; going on with empty parameters (--allow-empty)"
                );
                Map::new()
            }
            decoded => decoded?,
        },
        None if args.allow_empty => {
            tracing::warn!("no user-data; going on with empty parameters (--allow-empty)");
            Map::new()
        }
        None => match &args.user_data_file {
            Some(path) => return Err(Error::EmptyUserDataFile { path: path.clone() }),
            None => {
                return Err(Error::NoUserData {
                    waited: deadline.elapsed(),
                });
            }
        },
    })
}

/// The values one resolution of the parameters gives.
struct Rendered {
    set: values::Set,
    variables: usize,
}

/// Resolves the references and imports in `params`, checks bootstage's own settings (a
/// typo fails here, before anything is written) and renders the set of values with the
/// facts. `warn`: log the settings' near misses (once a boot, not at each refresh).
async fn render(
    params: Map<String, Value>,
    facts: &Facts,
    deadline: Deadline,
    warn: bool,
) -> Result<Rendered> {
    // What the facts take in params.env, which imports must leave room for.
    let mut facts_only = Env::default();
    facts.export(&mut facts_only)?;
    let resolved =
        secrets::resolve(params, facts.aws_region(), facts_only.size(), deadline).await?;
    Bootstage::from_params(&resolved.json)?;
    if warn {
        for warning in settings::warnings(&resolved.json) {
            tracing::warn!("{warning}");
        }
    }
    let mut env = Env::from_params(&resolved.env)?;
    facts.export(&mut env)?;
    // Root's hooks never get what an import brought (a value is data for the app; in a
    // root hook's environment a name like HOME or TAR_OPTIONS would steer it).
    let set = values::Set {
        params_json: pretty(&Value::Object(resolved.json)).into_bytes(),
        params_env: env.render().into_bytes(),
        hooks_env: env.render_without(&resolved.imported).into_bytes(),
        credentials: resolved
            .credentials
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes()))
            .collect(),
    };
    Ok(Rendered {
        set,
        variables: env.len(),
    })
}

/// Watch mode's resolution of the parameters' references and imports, again and again:
/// the parameters as user-data gave them (read once, at [`Refresher::load`]) and the facts
/// as `instance.json` holds them, so a refresh changes only what a reference or an import
/// brings.
pub struct Refresher {
    params: Map<String, Value>,
    facts: Facts,
    names: Names,
    timeout: Duration,
}

impl Refresher {
    /// Reads user-data (the file, or IMDS) and the facts the metadata stage wrote.
    pub async fn load(state: &StateDir, args: &Settings, notifier: Notifier) -> Result<Refresher> {
        args.validate().map_err(Error::Usage)?;
        let deadline = Deadline::after(args.timeout);
        let facts = Facts::of(state).ok_or_else(|| Error::Read {
            path: state.instance_json(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing or not the metadata stage's facts",
            ),
        })?;
        let raw = match &args.user_data_file {
            Some(path) => read_user_data_file(path)?,
            // The service the metadata stage read, as its facts record it: a watcher
            // started with other flags or environment must not read another one.
            None => {
                let provider = match Provider::of_facts(&facts.source) {
                    Some(provider) => provider,
                    None => chosen_provider(args)?,
                };
                from_provider(provider, args, deadline, notifier, false)
                    .await?
                    .0
            }
        };
        let params = decode(raw, args, deadline)?;
        let mut names = Names::default();
        let references = secrets::refs::find(&params).map_err(secrets::SecretError::from)?;
        for reference in references {
            match &reference.target {
                secrets::refs::Target::Ssm { name } => names.add_parameter(name),
                secrets::refs::Target::Secret { id, .. } => names.add_secret(id),
            }
        }
        for import in secrets::refs::imports(&params).map_err(secrets::SecretError::from)? {
            names.add_path(&import.ssm_path, import.recursive);
        }
        Ok(Refresher {
            params,
            facts,
            names,
            timeout: args.timeout,
        })
    }

    /// The parameters, secrets and paths a refresh resolves: what an event must name.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Resolves the parameters again and, if any value changed, makes the new set current
    /// (under the state dir's lock). True when it did. On error nothing is written: the
    /// current values stay.
    pub async fn refresh(&self, state: &StateDir) -> Result<bool> {
        let deadline = Deadline::after(self.timeout);
        let rendered = render(self.params.clone(), &self.facts, deadline, false).await?;
        let _lock = state.lock(deadline).await?;
        match values::write(state.root(), &rendered.set).map_err(write_error)? {
            Written::Swapped { changed } => {
                tracing::info!(
                    files = changed,
                    dir = %state.root().display(),
                    "resolved again: new values swapped in"
                );
                Ok(true)
            }
            Written::Unchanged => {
                tracing::debug!("resolved again: no value changed");
                Ok(false)
            }
        }
    }
}

/// The provider `--provider`, `BOOTSTAGE_PROVIDER` or the DMI names (else aws).
fn chosen_provider(args: &Settings) -> Result<Provider> {
    let env = std::env::var("BOOTSTAGE_PROVIDER").ok();
    let (provider, why) = provider::choose(
        args.provider.as_deref(),
        env.as_deref(),
        &Dmi::read(&args.dmi_root),
    )
    .map_err(Error::Usage)?;
    tracing::debug!(provider = provider.name(), by = why, "metadata provider");
    Ok(provider)
}

/// User-data from the provider's metadata service, with the facts when `facts` (else
/// empty facts).
async fn from_provider(
    provider: Provider,
    args: &Settings,
    deadline: Deadline,
    notifier: Notifier,
    facts: bool,
) -> Result<(Option<Vec<u8>>, Facts)> {
    match provider {
        Provider::Aws => {}
        Provider::Gcp => return from_gcp(args, deadline, notifier, facts).await,
        Provider::Azure => return from_azure(args, deadline, notifier, facts).await,
        Provider::OpenStack => return from_openstack(args, deadline, notifier, facts).await,
    }
    let endpoint = imds::resolve_endpoint(args.imds_endpoint.as_deref(), |k| std::env::var(k).ok())
        .map_err(Error::Usage)?;
    tracing::info!(endpoint, "reading user-data and facts from IMDS");
    let client = Client::new(imds::Options {
        endpoint,
        v2_only: args.imds_v2_only,
        request_timeout: args.request_timeout,
        deadline,
    })?;
    notifier.status("waiting for user-data");
    let user_data = client.user_data(args.user_data_wait(), waiting(&notifier));
    let (user_data, facts) = match facts {
        true => tokio::try_join!(user_data, Facts::from_imds(&client))?,
        false => (user_data.await?, Facts::default()),
    };
    Ok((user_data.filter(|raw| !raw.trim_ascii().is_empty()), facts))
}

/// `from_imds` on Compute Engine.
async fn from_gcp(
    args: &Settings,
    deadline: Deadline,
    notifier: Notifier,
    facts: bool,
) -> Result<(Option<Vec<u8>>, Facts)> {
    let endpoint =
        imds::gcp::resolve_endpoint(args.imds_endpoint.as_deref(), |k| std::env::var(k).ok())
            .map_err(Error::Usage)?;
    tracing::info!(
        endpoint,
        "reading user-data and facts from the GCP metadata server"
    );
    let client = imds::gcp::Client::new(imds::gcp::Options {
        endpoint,
        request_timeout: args.request_timeout,
        deadline,
    })?;
    notifier.status("waiting for user-data");
    let user_data = client.user_data(args.user_data_wait(), waiting(&notifier));
    let (user_data, facts) = match facts {
        true => tokio::try_join!(user_data, client.facts())?,
        false => (user_data.await?, Facts::default()),
    };
    Ok((user_data.filter(|raw| !raw.trim_ascii().is_empty()), facts))
}

/// What the user-data wait tells systemd and the log.
fn waiting(notifier: &Notifier) -> impl FnMut(u32, Duration) + '_ {
    move |attempt, waited| {
        let status = format!(
            "waiting for user-data: attempt {attempt}, {:.1} s",
            waited.as_secs_f64()
        );
        if attempt == 1 || attempt % 20 == 0 {
            tracing::info!("{status}");
        }
        notifier.status(&status);
    }
}

/// `from_imds` on Azure.
async fn from_azure(
    args: &Settings,
    deadline: Deadline,
    notifier: Notifier,
    facts: bool,
) -> Result<(Option<Vec<u8>>, Facts)> {
    let endpoint =
        imds::azure::resolve_endpoint(args.imds_endpoint.as_deref(), |k| std::env::var(k).ok())
            .map_err(Error::Usage)?;
    // A typo in the ready report's settings fails here, before anything is written.
    azure_ready_endpoint()?;
    tracing::info!(endpoint, "reading user-data and facts from Azure's IMDS");
    let client = imds::azure::Client::new(imds::azure::Options {
        endpoint,
        request_timeout: args.request_timeout,
        deadline,
    })?;
    notifier.status("waiting for user-data");
    let user_data = client.user_data(args.user_data_wait(), waiting(&notifier));
    let (user_data, facts) = match facts {
        true => tokio::try_join!(user_data, client.facts())?,
        false => (user_data.await?, Facts::default()),
    };
    Ok((user_data.filter(|raw| !raw.trim_ascii().is_empty()), facts))
}

/// On Azure with `BOOTSTAGE_AZURE_REPORT_READY=true`, the wireserver to report ready
/// to (`imds::wireserver`); `None` when not asked for. Checked before anything is read,
/// used once the values are current.
fn azure_ready_endpoint() -> Result<Option<String>> {
    use imds::wireserver;
    let env = |k: &str| std::env::var(k).ok();
    if !wireserver::wanted(env(wireserver::REPORT_READY_ENV).as_deref()).map_err(Error::Usage)? {
        return Ok(None);
    }
    Ok(Some(
        wireserver::resolve_endpoint(env).map_err(Error::Usage)?,
    ))
}

/// `from_imds` on OpenStack: the metadata service, or a config drive.
async fn from_openstack(
    args: &Settings,
    deadline: Deadline,
    notifier: Notifier,
    facts: bool,
) -> Result<(Option<Vec<u8>>, Facts)> {
    let source =
        imds::openstack::resolve_source(args.imds_endpoint.as_deref(), |k| std::env::var(k).ok())
            .map_err(Error::Usage)?;
    let client = imds::openstack::Client::new(imds::openstack::Options {
        source,
        request_timeout: args.request_timeout,
        deadline,
    })?;
    tracing::info!(
        from = client.describe(),
        "reading user-data and facts from OpenStack's metadata"
    );
    notifier.status("waiting for user-data");
    let user_data = client.user_data(args.user_data_wait(), waiting(&notifier));
    let (user_data, facts) = match facts {
        true => tokio::try_join!(user_data, client.facts())?,
        false => (user_data.await?, Facts::default()),
    };
    Ok((user_data.filter(|raw| !raw.trim_ascii().is_empty()), facts))
}

/// An empty file is "no user-data"; a missing one is an error naming it (a typo is likelier
/// than an instance without parameters); one over EC2's size limit is refused unread.
fn read_user_data_file(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    let read_error = |source| Error::UserDataFile {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut raw = Vec::new();
    file.take(userdata::MAX_RAW as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(read_error)?;
    if raw.len() > userdata::MAX_RAW {
        let size = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(raw.len());
        return Err(DecodeError::TooLarge(size).into());
    }
    Ok(Some(raw).filter(|raw| !raw.trim_ascii().is_empty()))
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    text
}
