//! bootstage: configure an instance at boot from its own parameters, in three stages,
//! each its own systemd unit: `metadata` (IMDS → state dir), `s3-sync` (S3 → local
//! directories) and `launch` (environment → the app).
//!
//! A boot starts in `main.rs`, which hands the parsed command line to the stage's module
//! (`metadata.rs`, `s3sync.rs`, `launch.rs`). The stages share: `imds` (the IMDS protocol), `retry` (the retry
//! policy and deadline), `userdata` (decoding), `envfile` (the env file), `facts`,
//! `source` (S3 and directory sources), `keys` (which keys may become files), `tree`
//! (atomic generations of a synced directory), `atomic` (every file write), `state` (the
//! state dir), `notify` (sd_notify), `logging` and `error` (exit codes).

pub mod atomic;
pub mod child;
pub mod cli;
pub mod envfile;
pub mod error;
pub mod facts;
pub mod hooks;
pub mod imds;
pub mod keys;
pub mod launch;
pub mod logging;
pub mod metadata;
pub mod notice;
pub mod notify;
pub mod query;
pub mod retry;
pub mod s3sync;
pub mod source;
pub mod state;
pub mod status;
pub mod tree;
pub mod userdata;
