//! bootstage: configure an instance at boot from its own parameters, one stage per systemd
//! unit: `metadata` (IMDS → state dir), `s3-sync` (S3 → local directories), `hooks` (the
//! operator's setup) and `launch` (environment → the app).
//!
//! The folders are the layers, top to bottom; a module may use what is below it, never
//! what is above (ARCHITECTURE.md):
//! - `cli` (the command line) and `stage/` (one module per stage or command);
//! - `imds/` (the IMDS protocol, user-data decoding, the facts), `secrets/` (references
//!   to SSM and Secrets Manager), `sync/` (sources, key safety, descriptor-relative file
//!   steps, atomic generations of a synced tree) and `aws/` (the shared SDK
//!   configuration and the reading of AWS errors), `orchestrator/` (the lifecycle
//!   hook's and CloudFormation's signals), `events/` (SQS wake-ups for watch mode),
//!   `settings/` (the schema of bootstage's own settings, `bootstage.*`), `report/` (a
//!   failed boot's forensics to S3, the boot's metrics as embedded metric format lines);
//! - `state/` (the state dir, atomic writes, the env file);
//! - `base/` (exit codes, the retry policy and deadlines, child processes, sd_notify,
//!   logging, the kill switch).

#![forbid(unsafe_code)]

// What the binary, the integration tests and xtask use is `pub`; the machinery below the
// stages is the crate's own (`pub(crate)`), so the dead-code lint sees every unused item.

pub(crate) mod aws;
pub mod base;
pub mod cli;
pub(crate) mod events;
pub mod imds;
pub(crate) mod orchestrator;
pub(crate) mod report;
pub(crate) mod secrets;
pub(crate) mod settings;
pub mod stage;
pub mod state;
pub(crate) mod sync;
