//! What a boot leaves behind for the people watching a fleet (`bootstage.report`, read by
//! `settings::report`; `stage::notice` decides when):
//! - `forensics`: a failed boot's journal excerpt, `status --json` and the stages' records,
//!   uploaded to an S3 prefix (`{instance_id}`, `{boot_id}` expanded) before the instance
//!   is abandoned, within a deadline;
//! - `emf`: CloudWatch embedded metric format lines (`TimeToReady`, each stage's duration,
//!   `BootFailed`), one JSON object a line, for the CloudWatch agent to ship from the
//!   journal;
//! - `tags`: the instance's status tags (`bootstage:status`, `:release`,
//!   `:ready-seconds`): what a moment says, what changed;
//! - `capture`: a bounded child's output, its last bytes kept (the journal's reader).

pub mod capture;
pub mod emf;
pub mod forensics;
pub mod tags;
