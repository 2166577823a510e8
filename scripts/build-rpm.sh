#!/bin/sh
# Builds the RPM (Amazon Linux, RHEL, Fedora): the same files as the .deb, from the one
# asset list in Cargo.toml ([package.metadata.deb] assets), files under /etc marked
# %config(noreplace), /usr/share/doc marked %doc; scriptlets in packaging/rpm/ (preset on
# first install, disable on erase, start nothing).
#   scripts/build-rpm.sh [--target aarch64] [--output DIR] [--no-build]
#   scripts/build-rpm.sh --debug-build [--target aarch64] [--output DIR]
#                       package target[/TRIPLE]/debug/bootstage as it is (for tests)
# Default output: target/rpm (target/TRIPLE/rpm with --target).
#
# With rpmbuild (Debian's `rpm` package, which scripts/install-test-deps.sh installs to
# inspect the package anyway) from a spec written here: it packs files that are already
# built, so nothing of rpmbuild's build machinery runs (no strip, no debuginfo, no
# dependency scan: the binary needs only glibc, named below with systemd). Building
# cargo-generate-rpm for this cost about 200 CPU-seconds of every fresh test run.
set -eu
cd "$(dirname "$0")/.."
. scripts/cross.sh
# One package build at a time (the tests build both at once): each rebuilds target/assets,
# which the other is reading. The lock goes with this shell.
mkdir -p target
exec 9>target/.packaging.lock
flock 9
output=
build=yes
profile=release
# zstd, as Amazon Linux 2023, RHEL 9 and Fedora build their own; gzip for a test package,
# whose unstripped debug binary zstd at level 19 takes minutes on.
payload=w19.zstdio
target=x86_64
while [ $# -gt 0 ]; do
  case $1 in
    --target) set_target "$2"; target=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --no-build) build=no; shift ;;
    --debug-build) build=no; profile=debug; payload=w6.gzdio; shift ;;
    *) echo "usage: $0 [--target x86_64|aarch64] [--output DIR] [--no-build] [--debug-build]" >&2; exit 64 ;;
  esac
done
case $target in
  aarch64|arm64|aarch64-unknown-linux-gnu) arch=aarch64 triple=aarch64-unknown-linux-gnu/ ;;
  *) arch=x86_64 triple= ;;
esac
[ -n "$output" ] || output=target/${triple}rpm
[ "$build" = no ] || cargo build --release --package bootstage $cargo_target
scripts/build-assets.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$output" "$work/stage"
output=$(cd "$output" && pwd)
# The spec and the staged tree, from Cargo.toml: the binary from the profile and target
# asked for (the asset list names target/release/bootstage, as cargo-deb wants).
cargo metadata --no-deps --format-version 1 | python3 -c '
import glob, json, os, shutil, sys
stage, binary_dir, spec = sys.argv[1], sys.argv[2], sys.argv[3]
meta = json.load(sys.stdin)
pkg = next(p for p in meta["packages"] if p["name"] == "bootstage")
# rpm expands macros everywhere in a spec, in scriptlets and their comments too: on a host
# with systemd-rpm-macros, a "%systemd_post" in a comment would become shell. Every
# text taken from elsewhere is written with its % doubled.
def literal(text):
    return text.replace("%", "%%")
# RPM distributions read zsh completions from site-functions; Debian from vendor-completions.
RPM_PATHS = {"/usr/share/zsh/vendor-completions/": "/usr/share/zsh/site-functions/"}
files, dirs = [], set()
for source, dest, mode in pkg["metadata"]["deb"]["assets"]:
    if source.startswith("target/release/"):
        source = binary_dir + source[len("target/release/"):]
    sources = sorted(glob.glob(source))
    if not sources:
        sys.exit("build-rpm.sh: no file for the asset " + source)
    for path in sources:
        target = "/" + (dest + os.path.basename(path) if dest.endswith("/") else dest)
        for deb, rpm in RPM_PATHS.items():
            if target.startswith(deb):
                target = rpm + target[len(deb):]
        os.makedirs(os.path.dirname(stage + target), exist_ok=True)
        shutil.copy2(path, stage + target)
        mark = ""
        if target.startswith("/etc/"):
            mark = "%config(noreplace) "
        elif target.startswith("/usr/share/doc/"):
            mark = "%doc "
        files.append("%%attr(%s,root,root) %s%s" % (mode, mark, literal(target)))
        # The directories that are bootstage'"'"'s alone, so that an erase removes them.
        parent = os.path.dirname(target)
        while "bootstage" in parent:
            dirs.add(parent)
            parent = os.path.dirname(parent)
files += ["%%dir %%attr(0755,root,root) %s" % literal(d) for d in sorted(dirs)]
def script(name):
    with open("packaging/rpm/" + name) as f:
        return literal(f.read().rstrip("\n"))
description = literal(pkg["description"])
with open(spec, "w") as out:
    out.write(f"""Name: bootstage
Version: {pkg["version"]}
Release: 1
Summary: {description}
License: {literal(pkg["license"])}
AutoReq: no
Requires: systemd
Requires: glibc
%description
{description}
%install
mkdir -p %{{buildroot}}
cp -a %{{_stage}}/. %{{buildroot}}/
%post
{script("post")}
%preun
{script("preun")}
%postun
{script("postun")}
%files
""" + "\n".join(files) + "\n")
print(pkg["version"])
' "$work/stage" "target/$triple$profile/" "$work/bootstage.spec" > "$work/version"
version=$(cat "$work/version")
rpmbuild -bb --quiet \
  --target "$arch" \
  --define "_topdir $work/top" \
  --define "_rpmdir $output" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "_stage $work/stage" \
  --define "_binary_payload $payload" \
  --define "debug_package %{nil}" \
  --define "__os_install_post %{nil}" \
  --define "__arch_install_post %{nil}" \
  --define "_build_id_links none" \
  "$work/bootstage.spec"
echo "$output/bootstage-$version-1.$arch.rpm"
