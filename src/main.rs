//! The `bootstage` binary: parse the command line, set up logging, run one stage, and
//! turn its outcome into an exit code (see `error.rs`).

use std::process::ExitCode;

use bootstage::cli::{Cli, Command};
use bootstage::error::{self, Error};
use bootstage::notify::Notifier;
use bootstage::state::StateDir;
use bootstage::{launch, logging, metadata, s3sync};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::ExitCode::Usage as u8
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            notifier.status(&format!("failed: {e}"));
            ExitCode::from(e.exit_code() as u8)
        }
    };
    notifier.settle();
    code
}

async fn run(cli: Cli, notifier: Notifier) -> Result<(), Error> {
    let state = StateDir::new(cli.state_dir);
    match cli.command {
        Command::Metadata(args) => {
            let summary = metadata::run(&state, &args, notifier).await?;
            notifier.ready(&summary);
            Ok(())
        }
        Command::S3Sync(args) => s3sync::run(&state, &args, notifier).await,
        Command::Launch(args) => launch::run(&state, &args, notifier).await,
    }
}
