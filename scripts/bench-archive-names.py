#!/usr/bin/env python3
"""Peak memory of unpacking archives of long names (issue item 5), and what they leave on disk.

The archives, each a .tar.zst of empty files whose names are 4,095 bytes (the longest a
path may be: PATH_MAX with its NUL), each name in a GNU long-name record as GNU tar
writes it, synced from file:// (no server: only bootstage's own memory is measured):

- "64,000 long names": the issue's archive, 64,000 files under one 3,839-byte directory
  (262 MB of names; 148 KB with the zstd tool's -19, whose window is 8 MiB);
- the same with `zstd --long=27`: a 128 MiB window, the most the decoder accepts, which
  the decoder holds beside everything else;
- "largest accepted": as many such files as fit under the cap on the archive's names
  (MAX_NAME_BYTES, 48 MiB), the worst an archive within the cap can do;
- "distinct deep directories": files under 4,000 distinct directories each 15 levels deep,
  so the directories bootstage makes (not named by any entry) hold 8 times the entries'
  names.

Each is synced twice into a fresh destination: the first pass unpacks, the second reads
the manifest and seal, finds the tree intact and the file unchanged, and stops there (a
refused archive has no second pass). Peak RSS is GNU time's (/usr/bin/time -v), a small parent,
because a child forked from Python reports Python's own RSS. Reported per pass: exit code,
peak RSS, wall time, and the sizes of the manifest and seal written.

Usage: scripts/bench-archive-names.py [--bin PATH] [--only NAME]
  --bin: the bootstage binary (default target/release/bootstage, else target/debug/bootstage)
Prints a Markdown table. Everything is on tmpfs (benchlib.scratch).
"""
import argparse, io, os, re, subprocess, sys, tarfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = benchlib.ROOT
NAME_MAX, PATH_MAX = 255, 4095
NAMES_CAP = 48 << 20


def long_dir(tag, levels=15):
    """A directory of `levels` segments of 255 bytes (3,839 bytes for 15), led by `tag`."""
    first = (tag + "d" * NAME_MAX)[:NAME_MAX]
    return "/".join([first] + ["d" * NAME_MAX] * (levels - 1))


def file_name(directory, i):
    """A 4,095-byte name in `directory`: its last segment padded to fill PATH_MAX."""
    last = PATH_MAX - len(directory) - 1
    return f"{directory}/{('f%d-' % i).ljust(last, 'x')}"


def write_tar(path, names, zstd_flags):
    """A GNU tar of empty files with these names, piped through `zstd -q -c ZSTD_FLAGS`."""
    with open(path, "wb") as out:
        z = subprocess.Popen(["zstd", "-q", "-c", *zstd_flags], stdin=subprocess.PIPE, stdout=out)
        with tarfile.open(fileobj=z.stdin, mode="w|", format=tarfile.GNU_FORMAT) as t:
            for name in names:
                info = tarfile.TarInfo(name)
                info.mtime = 1_700_000_000
                t.addfile(info, io.BytesIO(b""))
        z.stdin.close()
        if z.wait() != 0:
            raise SystemExit("zstd failed")


def archives():
    shared = long_dir("shared")
    issue = [file_name(shared, i) for i in range(64_000)]
    # The directories count too: the 15 the files are in, once each.
    dirs = sum(len(shared.rsplit("/", k)[0]) for k in range(15))
    accepted = [file_name(shared, i) for i in range((NAMES_CAP - dirs) // PATH_MAX)]
    deep = [file_name(long_dir(f"t{i}-"), i) for i in range(4_000)]
    return {
        "64,000 long names": (issue, ["-19"]),
        "64,000 long names, zstd --long=27": (issue, ["-9", "--long=27"]),
        "largest accepted": (accepted, ["-19"]),
        "distinct deep directories": (deep, ["-19"]),
    }


def timed(argv):
    """(exit code, peak RSS in MB, wall seconds, stderr's last line) of one run under GNU time."""
    start = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    wall = time.monotonic() - start
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("\t")]
    last = next((l for l in reversed(lines) if "Command exited" not in l and "Command being timed" not in l), "")
    return p.returncode, rss_kb / 1000, wall, last


def sizes(home):
    """Bytes of the manifest and seal in a destination's home (0 when there is none)."""
    def size_of(suffix):
        return sum(f.stat().st_size for f in home.glob(f"gen-*{suffix}")) if home.exists() else 0
    return size_of(".manifest.json"), size_of(".seal.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--only")
    args = ap.parse_args()
    binary = args.bin or next(
        (p for p in [ROOT / "target/release/bootstage", ROOT / "target/debug/bootstage"] if p.exists()), None)
    if binary is None:
        raise SystemExit("no bootstage binary: cargo build first")
    rows = []
    with benchlib.scratch() as work:
        work = Path(work)
        for label, (names, zstd_flags) in archives().items():
            if args.only and args.only != label:
                continue
            archive = work / f"{len(rows)}.tar.zst"
            write_tar(archive, names, zstd_flags)
            total = sum(len(n) for n in names)
            dest = work / f"dest{len(rows)}" / "app"
            argv = [str(binary), "--state-dir", str(work / f"state{len(rows)}"), "s3-sync",
                    "--from", f"file://{archive}", "--to", str(dest)]
            for phase in ["first pass", "unchanged pass"]:
                code, rss, wall, last = timed(argv)
                manifest, seal = sizes(dest.parent / ".app.bootstage")
                rows.append((label, len(names), total, archive.stat().st_size, phase, code, rss, wall, manifest, seal, last))
                print(f"{label}, {phase}: exit {code}, {rss:.0f} MB, {wall:.1f} s: {last[:200]}", file=sys.stderr)
                if code != 0:
                    break
    print(f"binary: {binary}\n")
    print("| archive | files | names (MB) | .tar.zst (KB) | pass | exit | peak RSS (MB) | wall (s) | manifest (MB) | seal (MB) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for label, n, total, packed, phase, code, rss, wall, manifest, seal, _ in rows:
        print(f"| {label} | {n:,} | {total / 1e6:.1f} | {packed / 1e3:,.0f} | {phase} | {code} | {rss:,.0f} | {wall:.1f} | {manifest / 1e6:.1f} | {seal / 1e6:.1f} |")


if __name__ == "__main__":
    main()
