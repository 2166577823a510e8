//! The `bootstage` binary: parse the command line, set up logging, run one stage, and
//! turn its outcome into an exit code (see `error.rs`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use bootstage::base::exit::{self, ExitStatus};
use bootstage::base::logging;
use bootstage::base::notify::Notifier;
use bootstage::cli::{Cli, Command, ImageCommand, LifecycleCommand};
use bootstage::stage::error::{self, Error};
use bootstage::stage::{
    fleet, hooks, image, in_service, launch, lifecycle, metadata, notice, query, rollback, s3sync,
    status, validate,
};
use bootstage::state::StateDir;
use clap::Parser;

fn main() -> ExitCode {
    if let Err(why) = bootstage::cli::check_env() {
        eprintln!("error: {why}");
        return ExitCode::from(exit::ExitCode::Usage as u8);
    }
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match Cli::try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let e = bootstage::cli::explain(e, &args);
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::ExitCode::Usage as u8
            } else {
                0
            });
        }
    };
    logging::init();
    let notifier = Notifier::from_env();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime always builds");
    let code = match runtime.block_on(run(cli, notifier)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            tracing::error!("{e}");
            notifier.status(&format!("failed: {e}"));
            ExitCode::from(e.exit_code() as u8)
        }
    };
    // A blocking thread still at work (an unpacker whose pass was dropped) must not hold
    // the exit: it stops at its next check, or with the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    notifier.settle();
    code
}

async fn run(cli: Cli, notifier: Notifier) -> Result<exit::ExitCode, Error> {
    let state = StateDir::new(cli.state_dir);
    // A stage that writes the state dir, run as another user: "run as root" before it
    // starts. (`launch` says what the app's unit needs instead; a one-off `s3-sync
    // --from` may sync into a user's own directory.)
    match &cli.command {
        Command::Metadata(_) => error::require_root_for_state(&state, "metadata")?,
        Command::Hooks(_) => error::require_root_for_state(&state, "hooks")?,
        Command::InService(_) => error::require_root_for_state(&state, "in-service")?,
        Command::Image(_) => error::require_root_for_state(&state, "image prepare")?,
        Command::S3Sync(args) if args.from.is_none() => {
            error::require_root_for_state(&state, "s3-sync")?
        }
        _ => {}
    }
    match cli.command {
        Command::Metadata(args) => {
            let summary = metadata::run(&state, &args.into(), notifier).await?;
            notifier.ready(&summary);
        }
        Command::S3Sync(args) => s3sync::run(&state, &args.into(), notifier).await?,
        Command::Hooks(args) => {
            let summary = hooks::run(&state, &args.into(), notifier).await?;
            notifier.ready(&summary);
        }
        Command::Launch(args) => launch::run(&state, &args.into(), notifier).await?,
        Command::InService(args) => {
            if let Some(summary) = in_service::run(&state, &args.into(), notifier).await? {
                notifier.ready(&summary);
            }
        }
        Command::Status(args) => return status::run(&state, &args.into()).await,
        Command::Query(args) => query::run(&state, &args.into())?,
        Command::Validate(args) => return validate::run(&args.into()).await,
        Command::Notify(args) => notice::run(&state, &args.into()).await?,
        Command::Lifecycle(args) => {
            let settings = args.config.into();
            match args.command {
                LifecycleCommand::Watch(watch) => {
                    lifecycle::watch(&state, &settings, &watch.into(), notifier).await?
                }
                LifecycleCommand::Complete => lifecycle::ready(&state, &settings, true).await?,
            }
        }
        Command::Release(args) => {
            lifecycle::release(&state, &args.config.into(), args.proceed).await?
        }
        Command::Image(args) => match args.command {
            ImageCommand::Prepare(prepare) => image::prepare(&state, &prepare.into()).await?,
        },
        Command::Rollback(args) => rollback::run(&state, &args.into()).await?,
        Command::Generations(args) => rollback::generations(&args.into()).await?,
        Command::Fleet(args) => fleet::run(&state, &args.into()).await?,
    }
    Ok(exit::ExitCode::Ok)
}
