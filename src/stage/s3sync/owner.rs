//! The owner and group a sync entry asks for, by number or by name as chown(1) takes
//! them, looked up once per pass on this machine.

use super::SyncError;
use crate::settings::SyncSpec;

/// A user or group given by number or by name, as chown(1) takes it.
fn lookup<T>(
    what: &str,
    given: Option<&str>,
    from_number: impl Fn(u32) -> T,
    by_name: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, SyncError> {
    let Some(given) = given else { return Ok(None) };
    let found = match given.parse::<u32>() {
        Ok(number) => Some(from_number(number)),
        Err(_) => by_name(given),
    };
    let missing =
        || SyncError::Settings(format!("{what} {given:?} does not exist on this machine"));
    found.map(Some).ok_or_else(missing)
}

/// The owner and group a sync entry asks for.
pub(super) struct Ownership {
    pub(super) uid: Option<nix::unistd::Uid>,
    pub(super) gid: Option<nix::unistd::Gid>,
}

impl Ownership {
    pub(super) fn resolve(spec: &SyncSpec) -> Result<Ownership, SyncError> {
        use nix::unistd::{Gid, Group, Uid, User};
        let by_user = |n: &str| User::from_name(n).ok().flatten().map(|u| u.uid);
        let by_group = |n: &str| Group::from_name(n).ok().flatten().map(|g| g.gid);
        let uid = lookup("owner", spec.owner.as_deref(), Uid::from_raw, by_user)?;
        let gid = lookup("group", spec.group.as_deref(), Gid::from_raw, by_group)?;
        Ok(Ownership { uid, gid })
    }
}
