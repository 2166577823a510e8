//! The integration tests, as one binary (rust-analyzer's `tests/slow-tests` pattern):
//! every module shares one build of `common` and links the AWS SDK clients once, where
//! a binary per file compiled `common` and linked the SDK seventeen times.
//!
//! Each module tests the real `bootstage` binary against real components on loopback
//! (`common` says how). Tiers, by name: `cargo test --test it` runs everything (what
//! `scripts/test.sh` and CI run); `cargo test --test it -- --skip boot:: --skip boot_drain::
//! --skip packages:: --skip demo::` leaves out the four that build packages or boot
//! systemd, for a quick loop; `cargo test --test it secrets::` runs one module.

mod common;

mod azure_drain;
mod boot;
mod boot_drain;
mod boot_image;
mod boot_report;
mod boot_warm;
mod bundles;
mod checksums;
mod cloudformation;
mod decode;
mod demo;
mod drain;
mod envfile_roundtrip;
mod fleet;
mod gcp_drain;
mod hardening;
mod install;
mod launch;
mod lifecycle;
mod metadata_imds;
mod notify_and_files;
mod operator;
mod packages;
mod providers;
mod ranged;
mod releases;
mod report;
mod rotation;
mod s3_compatible;
mod s3_sync;
mod secrets;
mod sync_hostile;
mod warm;
mod watch_sqs;
