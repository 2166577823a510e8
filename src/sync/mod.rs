//! Sync machinery: where objects come from (`source`), which keys may become files
//! (`keys`), archives unpacked safely (`archive`), and atomic generations of a
//! destination directory (`tree`).

pub mod archive;
pub mod fsat;
pub mod keys;
pub mod source;
pub mod tree;
