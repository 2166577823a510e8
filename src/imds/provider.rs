//! Which cloud's metadata service the metadata stage asks for user-data and facts.
//!
//! `aws` (EC2's IMDS, `imds::Client`), `gcp` (Compute Engine's metadata server,
//! `imds::gcp`), `azure` (Azure's IMDS, `imds::azure`) or `openstack` (Nova's metadata
//! service or config drive, `imds::openstack`). The choice, in order: `--provider`, else
//! `BOOTSTAGE_PROVIDER`, else the machine's DMI (`/sys/class/dmi/id/`: `sys_vendor`,
//! `product_name`, `board_asset_tag`, `chassis_asset_tag`, as afterburn and cloud-init's
//! ds-identify read them), else `aws`. Nothing is probed over the network to decide: the
//! only address contacted is the chosen provider's.
//!
//! What the DMI says, in order: a `board_asset_tag` starting `i-` is EC2 (Nitro puts the
//! instance id there); `chassis_asset_tag` `7783-7084-3265-9085-8269-3286-77` is Azure
//! (its `sys_vendor`, `Microsoft Corporation`, is also any Hyper-V guest's, so it alone
//! decides nothing); `sys_vendor` `Google` is GCP, `Amazon EC2` is EC2; `product_name` or
//! `chassis_asset_tag` `OpenStack Nova` or `OpenStack Compute`, or `sys_vendor`
//! `OpenStack Foundation` (Nova's default manufacturer), is OpenStack.
//!
//! [`choose`] is the decision, a pure function; [`Dmi::read`] the I/O before it.

use std::path::Path;

/// Where the kernel shows the machine's DMI (SMBIOS) strings.
pub const DMI_ROOT: &str = "/sys/class/dmi/id";

/// The names `--provider` and `BOOTSTAGE_PROVIDER` take.
pub const NAMES: [&str; 4] = ["aws", "gcp", "azure", "openstack"];

/// Azure's chassis asset tag (the ASCII codes of "MSFT AZURE VM").
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
/// Nova's SMBIOS product names (the second from RDO's packages).
const OPENSTACK_PRODUCTS: [&str; 2] = ["OpenStack Nova", "OpenStack Compute"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// EC2's instance metadata service (IMDS).
    Aws,
    /// Compute Engine's metadata server.
    Gcp,
    /// Azure's instance metadata service.
    Azure,
    /// Nova's metadata service, or a config drive.
    OpenStack,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::OpenStack => "openstack",
        }
    }

    fn parse(name: &str) -> Option<Provider> {
        match name.trim().to_ascii_lowercase().as_str() {
            "aws" => Some(Provider::Aws),
            "gcp" => Some(Provider::Gcp),
            "azure" => Some(Provider::Azure),
            "openstack" => Some(Provider::OpenStack),
            _ => None,
        }
    }

    /// The provider whose facts name this `source` (`instance.json`), if any.
    pub fn of_facts(source: &str) -> Option<Provider> {
        match source {
            "imds" => Some(Provider::Aws),
            "gcp" => Some(Provider::Gcp),
            "azure" => Some(Provider::Azure),
            "openstack" => Some(Provider::OpenStack),
            _ => None,
        }
    }
}

/// The DMI strings the choice reads (trimmed; `None` when absent or unreadable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub board_asset_tag: Option<String>,
    pub chassis_asset_tag: Option<String>,
}

impl Dmi {
    /// Reads `sys_vendor`, `product_name`, `board_asset_tag` and `chassis_asset_tag`
    /// under `root` (normally [`DMI_ROOT`]); a
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
            product_name: read("product_name"),
            board_asset_tag: read("board_asset_tag"),
            chassis_asset_tag: read("chassis_asset_tag"),
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
    let chassis = dmi.chassis_asset_tag.as_deref();
    if chassis == Some(AZURE_ASSET_TAG) {
        return Ok((Provider::Azure, "DMI chassis_asset_tag"));
    }
    match dmi.sys_vendor.as_deref() {
        Some("Google") => return Ok((Provider::Gcp, "DMI sys_vendor")),
        Some("Amazon EC2") => return Ok((Provider::Aws, "DMI sys_vendor")),
        _ => {}
    }
    let nova = |s: Option<&str>| s.is_some_and(|s| OPENSTACK_PRODUCTS.contains(&s));
    if nova(dmi.product_name.as_deref()) {
        return Ok((Provider::OpenStack, "DMI product_name"));
    }
    if nova(chassis) {
        return Ok((Provider::OpenStack, "DMI chassis_asset_tag"));
    }
    match dmi.sys_vendor.as_deref() {
        Some("OpenStack Foundation") => Ok((Provider::OpenStack, "DMI sys_vendor")),
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
            ..Dmi::default()
        }
    }

    /// sys_vendor, product_name, chassis_asset_tag.
    fn full(vendor: &str, product: &str, chassis: &str) -> Dmi {
        let some = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        Dmi {
            sys_vendor: some(vendor),
            product_name: some(product),
            board_asset_tag: None,
            chassis_asset_tag: some(chassis),
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
        let azure = full("Microsoft Corporation", "Virtual Machine", AZURE_ASSET_TAG);
        let hyper_v = full("Microsoft Corporation", "Virtual Machine", "None");
        let nova = full("OpenStack Foundation", "OpenStack Nova", "");
        let rdo = full("Red Hat", "OpenStack Compute", "");
        let tagged_nova = full("QEMU", "Standard PC", "OpenStack Nova");
        let foundation = full("OpenStack Foundation", "Standard PC", "");
        /// --provider, BOOTSTAGE_PROVIDER, the DMI → the provider, and why.
        type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a Dmi, Provider, &'a str);
        #[rustfmt::skip]
        let table: [Case; 25] = [
            (Some("gcp"), Some("aws"), &ec2, Gcp, "--provider"),
            (Some("AWS"), None, &google, Aws, "--provider"),
            (Some("azure"), None, &ec2, Azure, "--provider"),
            (Some("OpenStack"), Some("gcp"), &azure, OpenStack, "--provider"),
            (None, Some("gcp"), &ec2, Gcp, "BOOTSTAGE_PROVIDER"),
            (None, Some(" aws "), &google, Aws, "BOOTSTAGE_PROVIDER"),
            (None, Some("azure"), &nova, Azure, "BOOTSTAGE_PROVIDER"),
            (None, Some("openstack"), &azure, OpenStack, "BOOTSTAGE_PROVIDER"),
            (None, Some(""), &google, Gcp, "DMI sys_vendor"),
            (None, None, &google, Gcp, "DMI sys_vendor"),
            (None, None, &ec2, Aws, "DMI board_asset_tag"),
            (None, None, &xen_ec2, Aws, "DMI board_asset_tag"),
            (None, None, &dmi(Some("Amazon EC2"), None), Aws, "DMI sys_vendor"),
            (None, None, &azure, Azure, "DMI chassis_asset_tag"),
            (None, None, &hyper_v, Aws, "the default"),
            (None, None, &nova, OpenStack, "DMI product_name"),
            (None, None, &rdo, OpenStack, "DMI product_name"),
            (None, None, &tagged_nova, OpenStack, "DMI chassis_asset_tag"),
            (None, None, &foundation, OpenStack, "DMI sys_vendor"),
            (None, None, &full("QEMU", "openstack nova", ""), Aws, "the default"),
            (None, None, &full("Microsoft", "", "7783-7084-3265-9085-8269-3286-7"), Aws, "the default"),
            (None, None, &other, Aws, "the default"),
            (None, None, &none, Aws, "the default"),
            (None, None, &dmi(Some("Google Inc"), None), Aws, "the default"),
            (None, Some(""), &azure, Azure, "DMI chassis_asset_tag"),
        ];
        for (flag, env, dmi, provider, why) in table {
            assert_eq!(
                choose(flag, env, dmi),
                Ok((provider, why)),
                "{flag:?} {env:?} {dmi:?}"
            );
        }
        assert_eq!(
            choose(Some("oracle"), None, &none).unwrap_err(),
            "--provider \"oracle\": unknown provider; known: aws, gcp, azure, openstack"
        );
        assert_eq!(
            choose(None, Some("gce"), &google).unwrap_err(),
            "BOOTSTAGE_PROVIDER=\"gce\": unknown provider; known: aws, gcp, azure, openstack"
        );
        for provider in [Aws, Gcp, Azure, OpenStack] {
            assert_eq!(Provider::parse(provider.name()), Some(provider));
        }
        assert_eq!(Provider::of_facts("imds"), Some(Aws));
        assert_eq!(Provider::of_facts("azure"), Some(Azure));
        assert_eq!(Provider::of_facts("openstack"), Some(OpenStack));
        assert_eq!(Provider::of_facts("flags"), None);
    }

    #[test]
    fn dmi_is_read_from_its_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Dmi::read(dir.path()), Dmi::default());
        std::fs::write(dir.path().join("sys_vendor"), "Google\n").unwrap();
        std::fs::write(dir.path().join("board_asset_tag"), "  \n").unwrap();
        assert_eq!(Dmi::read(dir.path()), dmi(Some("Google"), None));
        std::fs::write(dir.path().join("sys_vendor"), "Microsoft Corporation\n").unwrap();
        std::fs::write(dir.path().join("product_name"), "Virtual Machine\n").unwrap();
        std::fs::write(
            dir.path().join("chassis_asset_tag"),
            format!("{AZURE_ASSET_TAG}\n"),
        )
        .unwrap();
        assert_eq!(
            Dmi::read(dir.path()),
            full("Microsoft Corporation", "Virtual Machine", AZURE_ASSET_TAG)
        );
    }
}
