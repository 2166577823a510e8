#!/usr/bin/env python3
"""Release benchmark (#28): how long `bootstage rollback` takes from the command to the
previous generation current.

Two releases (each a tar of --files files, 4 KiB each) are synced from file:// into one
destination on a disk directory (--dir, default /var/tmp: fsync there is real, unlike on
tmpfs), so it keeps two generations. Then --runs rollbacks alternate between them
(`rollback DEST --to GEN`, no --on-change, no notice configured), each timed:
- wall: from spawning the command until it exited (process start included), and
- swap: the command's own measure, from its start to the link renamed and the parent
  fsynced (the `ms` of its "rolled back" log line).
After each run the destination's `version` file is read back, so a run that did not swap
fails the benchmark. Prints p50 and p90 of both; the target is a p50 of 50 ms or less.

Usage: scripts/bench-release.py [--runs 50] [--files 1000] [--dir /var/tmp]
Needs a release build: CARGO_TARGET_DIR=/work/rel-target cargo build --release --bin bootstage
(benchlib finds it under CARGO_TARGET_DIR).
"""
import argparse, io, json, os, re, shutil, statistics, subprocess, sys, tarfile, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import BIN  # noqa: E402


def release(path, version, files):
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        add("version", f"{version}\n".encode())
        for i in range(files):
            add(f"d{i % 10}/f{i}", (f"{version}-{i}-".encode() * 512)[:4096])


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"no release build at {BIN}")
    work = Path(tempfile.mkdtemp(prefix="bench-release.", dir=args.dir))
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BOOTSTAGE_LOG": "info",
               "BOOTSTAGE_NOTIFY_CONFIG": str(work / "no-notify.json"),
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
        state = work / "state"
        dest = work / "srv" / "code"
        base = [str(BIN), "--state-dir", str(state)]
        for v in (1, 2):
            release(work / f"{v}.tar", v, args.files)
            subprocess.run(base + ["s3-sync", "--from", f"file://{work}/{v}.tar", "--to", str(dest)],
                           env=env, check=True, capture_output=True)
        listed = json.loads(subprocess.run(base + ["generations", str(dest), "--json"], env=env,
                                           check=True, capture_output=True, text=True).stdout)
        gens = [g["generation"] for g in listed["generations"]]
        assert len(gens) == 2, listed
        walls, swaps = [], []
        for run in range(args.runs):
            target = gens[run % 2]
            want = "1\n" if target == gens[0] else "2\n"
            start = time.perf_counter()
            done = subprocess.run(base + ["rollback", str(dest), "--to", target], env=env,
                                  capture_output=True, text=True)
            walls.append((time.perf_counter() - start) * 1000)
            if done.returncode != 0:
                sys.exit(f"run {run}: exit {done.returncode}: {done.stderr}")
            if (dest / "version").read_text() != want:
                sys.exit(f"run {run}: the destination does not serve {want.strip()}")
            m = re.search(r"ms=(\d+)", done.stderr)
            if m:
                swaps.append(int(m.group(1)))
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
        print(f"rollback, {args.runs} runs, {args.files} files a generation, on {fs} ({args.dir}):")
        print(f"  wall (spawn to exit): p50 {pct(walls, 50):.1f} ms, p90 {pct(walls, 90):.1f} ms,"
              f" max {max(walls):.1f} ms")
        if swaps:
            print(f"  swap (command start to link renamed and fsynced, its own log): p50 {pct(swaps, 50)} ms,"
                  f" p90 {pct(swaps, 90)} ms")
        print(f"  target: p50 <= 50 ms: {'met' if pct(walls, 50) <= 50 else 'NOT met'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
