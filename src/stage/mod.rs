//! The stages and commands, one module each: the top layer. Each takes its settings, does
//! its work through the layers below, and returns a summary or an error with an exit code.

pub mod error;
pub mod fleet;
pub mod hooks;
pub mod identity;
pub mod image;
pub mod in_service;
pub mod launch;
pub mod lifecycle;
pub mod metadata;
pub mod notice;
pub mod query;
pub mod rollback;
pub mod s3sync;
pub mod status;
pub mod tags;
pub mod validate;
