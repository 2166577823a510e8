//! The `metadata` stage: from IMDS (or a user-data file) to `params.json`,
//! `instance.json` and `params.env` in the state dir, then READY.
//!
//! A boot, step by step:
//! 1. take the state dir's lock (creating the dir 0700);
//! 2. fetch user-data, polling while it is not there yet, and the facts, concurrently;
//! 3. decode user-data into the parameters object and flatten it, with the facts, into
//!    environment variables;
//! 4. write the three files atomically, all staged before the first rename;
//! 5. return a summary; the caller tells systemd READY=1 (run in-process by a later stage,
//!    this stage must not declare that stage ready).
//!
//! Nothing is written until every step before it has succeeded, so a failed run leaves the
//! previous files as they were.

use std::io::Read;

use serde_json::{Map, Value};

use crate::base::notify::Notifier;
use crate::base::retry::Deadline;
use crate::cli::MetadataArgs;
use crate::error::{Error, Result};
use crate::imds::facts::Facts;
use crate::imds::userdata::{self, DecodeError};
use crate::imds::{self, Client};
use crate::stage::status::{self, Stage};
use crate::state::StateDir;
use crate::state::atomic;
use crate::state::envfile::Env;

/// For a later stage run by hand: runs this stage in-process when its outputs are missing,
/// or always with `refresh`. Sends no READY (the caller is another stage).
pub async fn ensure(
    state: &StateDir,
    args: &MetadataArgs,
    refresh: bool,
    notifier: Notifier,
) -> Result<()> {
    let present = [
        state.params_json(),
        state.instance_json(),
        state.params_env(),
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
pub async fn run(state: &StateDir, args: &MetadataArgs, notifier: Notifier) -> Result<String> {
    status::track(state, Stage::Metadata, fetch(state, args, notifier)).await
}

async fn fetch(state: &StateDir, args: &MetadataArgs, notifier: Notifier) -> Result<String> {
    args.validate().map_err(Error::Usage)?;
    let deadline = Deadline::after(args.timeout);
    let _lock = state.lock(deadline).await?;

    let (raw, facts) = match &args.user_data_file {
        Some(path) => (
            read_user_data_file(path)?,
            Facts::from_flags(&args.facts).map_err(Error::Usage)?,
        ),
        None => from_imds(args, deadline, notifier).await?,
    };

    let params = match raw {
        Some(raw) => userdata::decode(&raw)?,
        None if args.allow_empty => {
            tracing::warn!("no user-data; going on with empty parameters (--allow-empty)");
            Map::new()
        }
        None => {
            return Err(Error::NoUserData {
                waited: deadline.elapsed(),
            });
        }
    };
    let mut env = Env::from_params(&params)?;
    facts.export(&mut env)?;
    let missing: Vec<&str> = facts
        .named()
        .iter()
        .filter(|f| f.1.is_none())
        .map(|f| f.0)
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            source = facts.source,
            missing = missing.join(","),
            "some instance facts are absent"
        );
    }

    let params_json = pretty(&Value::Object(params));
    let instance_json = pretty(&serde_json::to_value(&facts).expect("facts serialize"));
    let params_env = env.render();
    let (pj, ij, pe) = (
        state.params_json(),
        state.instance_json(),
        state.params_env(),
    );
    atomic::write_files(&[
        (&pj, params_json.as_bytes()),
        (&ij, instance_json.as_bytes()),
        (&pe, params_env.as_bytes()),
    ])
    .map_err(|(path, source)| Error::Write { path, source })?;

    tracing::info!(
        variables = env.len(),
        facts = facts.source,
        dir = %state.root().display(),
        elapsed_ms = deadline.elapsed().as_millis() as u64,
        "wrote params.json, instance.json, params.env"
    );
    Ok(format!("parameters ready: {} variables", env.len()))
}

async fn from_imds(
    args: &MetadataArgs,
    deadline: Deadline,
    notifier: Notifier,
) -> Result<(Option<Vec<u8>>, Facts)> {
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
    let user_data = client.user_data(args.user_data_wait(), |attempt, waited| {
        let status = format!(
            "waiting for user-data: attempt {attempt}, {:.1} s",
            waited.as_secs_f64()
        );
        if attempt == 1 || attempt % 20 == 0 {
            tracing::info!("{status}");
        }
        notifier.status(&status);
    });
    let (user_data, facts) = tokio::try_join!(user_data, Facts::from_imds(&client))?;
    Ok((user_data.filter(|raw| !raw.trim_ascii().is_empty()), facts))
}

/// A missing or empty file is "no user-data"; one over EC2's size limit is refused unread.
fn read_user_data_file(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    let read_error = |source| Error::Read {
        path: path.into(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
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
