//! The kill switch: `/etc/bootstage/disabled` on one machine, or `bootstage=disabled` on the
//! kernel command line for one boot. The units check the same two with
//! `ConditionPathExists=!` and `ConditionKernelCommandLine=!`; `launch` and `status` ask here.

use std::path::Path;

/// The kill switch the units check with `ConditionPathExists=!` and
/// `ConditionKernelCommandLine=!`.
pub const DISABLED_FILE: &str = "/etc/bootstage/disabled";

/// Why bootstage is disabled on this machine, if it is.
pub fn disabled_reason() -> Option<String> {
    disabled(Path::new(DISABLED_FILE), Path::new("/proc/cmdline"))
}

fn disabled(marker: &Path, cmdline: &Path) -> Option<String> {
    if marker.exists() {
        return Some(format!("{} exists", marker.display()));
    }
    let cmdline = std::fs::read_to_string(cmdline).unwrap_or_default();
    cmdline
        .split_whitespace()
        .any(|word| word == "bootstage=disabled")
        .then(|| "bootstage=disabled on the kernel command line".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kill_switch() {
        let dir = tempfile::tempdir().unwrap();
        let (marker, cmdline) = (dir.path().join("disabled"), dir.path().join("cmdline"));
        std::fs::write(&cmdline, "ro quiet bootstage=enabled\n").unwrap();
        assert_eq!(disabled(&marker, &cmdline), None);
        std::fs::write(&cmdline, "ro bootstage=disabled quiet\n").unwrap();
        assert_eq!(
            disabled(&marker, &cmdline).as_deref(),
            Some("bootstage=disabled on the kernel command line")
        );
        std::fs::write(&marker, "").unwrap();
        assert!(
            disabled(&marker, &cmdline)
                .unwrap()
                .ends_with("disabled exists")
        );
    }
}
