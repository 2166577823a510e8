//! Which cloud's metadata service the metadata stage asks for user-data and facts.
//!
//! `aws` (EC2's IMDS, `imds::Client`) or `gcp` (Compute Engine's metadata server,
//! `imds::gcp`). The choice, in order: `--provider`, else `BOOTSTAGE_PROVIDER`, else the
//! machine's DMI (`/sys/class/dmi/id/sys_vendor` and `board_asset_tag`, as afterburn and
//! cloud-init read them), else `aws`. Nothing is probed over the network to decide: the
//! only address contacted is the chosen provider's.
//!
//! [`choose`] is the decision, a pure function; [`Dmi::read`] the I/O before it.

use std::path::Path;

/// Where the kernel shows the machine's DMI (SMBIOS) strings.
pub const DMI_ROOT: &str = "/sys/class/dmi/id";

/// The names `--provider` and `BOOTSTAGE_PROVIDER` take.
pub const NAMES: [&str; 2] = ["aws", "gcp"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// EC2's instance metadata service (IMDS).
    Aws,
    /// Compute Engine's metadata server.
    Gcp,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
        }
    }

    fn parse(name: &str) -> Option<Provider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "aws" => Some(Provider::Aws),
            "gcp" => Some(Provider::Gcp),
            _ => None,
        }
    }
}

/// The DMI strings the choice reads (trimmed; `None` when absent or unreadable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub board_asset_tag: Option<String>,
}

impl Dmi {
    /// Reads `sys_vendor` and `board_asset_tag` under `root` (normally [`DMI_ROOT`]); a
    /// file that is missing or unreadable (a container, another architecture) is `None`.
    pub fn read(root: &Path) -> Dmi {
        let read = |name: &str| {
            std::fs::read(root.join(name))
                .ok()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(256)])
                        .trim()
                        .to_string()
                })
                .filter(|s| !s.is_empty())
        };
        Dmi {
            sys_vendor: read("sys_vendor"),
            board_asset_tag: read("board_asset_tag"),
        }
    }
}

/// The provider, and in a few words why (for the log). An unknown name in the flag or the
/// variable is an error naming the known ones; an empty variable counts as unset.
pub fn choose(
    flag: Option<&str>,
    env: Option<&str>,
    dmi: &Dmi,
) -> Result<(Provider, &'static str), String> {
    let named = |name: &str, origin: &str| {
        Provider::parse(name).ok_or_else(|| {
            format!(
                "{origin}{name:?}: unknown provider; known: {}",
                NAMES.join(", ")
            )
        })
    };
    if let Some(flag) = flag {
        return Ok((named(flag, "--provider ")?, "--provider"));
    }
    if let Some(env) = env.filter(|v| !v.trim().is_empty()) {
        return Ok((named(env, "BOOTSTAGE_PROVIDER=")?, "BOOTSTAGE_PROVIDER"));
    }
    // EC2 (Nitro) puts the instance id in the board's asset tag.
    if dmi
        .board_asset_tag
        .as_deref()
        .is_some_and(|t| t.starts_with("i-"))
    {
        return Ok((Provider::Aws, "DMI board_asset_tag"));
    }
    match dmi.sys_vendor.as_deref() {
        Some("Google") => Ok((Provider::Gcp, "DMI sys_vendor")),
        Some("Amazon EC2") => Ok((Provider::Aws, "DMI sys_vendor")),
        _ => Ok((Provider::Aws, "the default")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(vendor: Option<&str>, tag: Option<&str>) -> Dmi {
        Dmi {
            sys_vendor: vendor.map(str::to_string),
            board_asset_tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn choice_table() {
        use Provider::*;
        let google = dmi(Some("Google"), Some(""));
        let ec2 = dmi(Some("Amazon EC2"), Some("i-0123456789abcdef0"));
        let xen_ec2 = dmi(Some("Xen"), Some("i-0abc"));
        let other = dmi(Some("QEMU"), None);
        let none = Dmi::default();
        /// --provider, BOOTSTAGE_PROVIDER, the DMI → the provider, and why.
        type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a Dmi, Provider, &'a str);
        #[rustfmt::skip]
        let table: [Case; 12] = [
            (Some("gcp"), Some("aws"), &ec2, Gcp, "--provider"),
            (Some("AWS"), None, &google, Aws, "--provider"),
            (None, Some("gcp"), &ec2, Gcp, "BOOTSTAGE_PROVIDER"),
            (None, Some(" aws "), &google, Aws, "BOOTSTAGE_PROVIDER"),
            (None, Some(""), &google, Gcp, "DMI sys_vendor"),
            (None, None, &google, Gcp, "DMI sys_vendor"),
            (None, None, &ec2, Aws, "DMI board_asset_tag"),
            (None, None, &xen_ec2, Aws, "DMI board_asset_tag"),
            (None, None, &dmi(Some("Amazon EC2"), None), Aws, "DMI sys_vendor"),
            (None, None, &other, Aws, "the default"),
            (None, None, &none, Aws, "the default"),
            (None, None, &dmi(Some("Google Inc"), None), Aws, "the default"),
        ];
        for (flag, env, dmi, provider, why) in table {
            assert_eq!(
                choose(flag, env, dmi),
                Ok((provider, why)),
                "{flag:?} {env:?} {dmi:?}"
            );
        }
        assert_eq!(
            choose(Some("azure"), None, &none).unwrap_err(),
            "--provider \"azure\": unknown provider; known: aws, gcp"
        );
        assert_eq!(
            choose(None, Some("gce"), &google).unwrap_err(),
            "BOOTSTAGE_PROVIDER=\"gce\": unknown provider; known: aws, gcp"
        );
    }

    #[test]
    fn dmi_is_read_from_its_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Dmi::read(dir.path()), Dmi::default());
        std::fs::write(dir.path().join("sys_vendor"), "Google\n").unwrap();
        std::fs::write(dir.path().join("board_asset_tag"), "  \n").unwrap();
        assert_eq!(Dmi::read(dir.path()), dmi(Some("Google"), None));
    }
}
