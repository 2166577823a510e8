#!/usr/bin/env python3
"""Bundle benchmark: one large .tar.zst downloaded and unpacked, each tool the same object,
against bench-s3 on 127.0.0.1 with each connection capped (`--conn-rate`, default 90 MB/s,
as S3 serves one connection at about 85-100 MB/s and scales with connections).

The bundles are incompressible (random bytes: zstd -3 keeps them at their size): 177 MB
and 1 GB by default, each 8 MiB files plus 1,000 small ones, uploaded with a CRC32
full-object checksum (bootstage verifies it; boto3 computes no CRC64NVME without awscrt).
Everything (server root, archives, destinations) is on tmpfs (benchlib.scratch says why).
Per bundle and tool, the median of --runs runs of:
- wall from start until the tree is unpacked; client CPU (user+sys) and peak RSS, from
  GNU time (for a pipeline, the largest process's);
- GETs the server logged (ranged ones apart), and HEADs, for the last run.
Tools:
- the floor: bench-floor (crates/bench-s3) GETs the same 8 MiB ranges 8 at once and
  discards the bytes, so the table shows what is the server's and what is ours;
- bootstage s3-sync of the bundle in parts (the defaults: 8 MiB parts, up to 8 at once as
  the link needs, the first GET asking for the first part, one HEAD for the full-object
  checksum), and with `parts_in_flight: 1` (one stream, as before ranged GETs);
- `aws s3 cp` then `tar --zstd -x`, at aws-cli's defaults (8 MiB parts, 10 at once) and
  with max_concurrent_requests 8 (matched to bootstage's);
- `s5cmd cp` then `tar --zstd -x`, at its defaults (50 MiB parts, 5 at once) and with
  `--concurrency 8 --part-size 8` (matched).

With --resync BEFORE (another bootstage binary, e.g. one built before the directory cache):
the 10-changed re-sync of bench-sync.py's prefix (2,000 small files and 20 of 8 MiB, 10
small objects changed, 5 keeping their size) against bench-s3 without a rate cap, each
binary in its own destination, --runs rounds: client CPU (median), and the system calls of
one more round under `strace -c -f` (openat apart), with `aws s3 sync`'s CPU as the
yardstick. Writes the resync section of BENCHMARKS.md unless --no-write.

Usage: scripts/bench-bundle.py [--sizes 177,1024] [--conn-rate 90] [--runs 3] [--no-write]
       scripts/bench-bundle.py --resync BEFORE [--runs 5] [--no-write]
Needs a release build (`CARGO_TARGET_DIR=… cargo build --release --bin bootstage -p
bench-s3`; benchlib finds it under CARGO_TARGET_DIR) and scripts/install-bench-deps.sh.
Writes the bundle section of BENCHMARKS.md unless --no-write.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tarfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import ACCESS_KEY, BENCH_FLOOR, BENCH_S3, BIN, SECRET_KEY, BenchS3, env_for  # noqa: E402

MIB = 1 << 20


class PacedS3(BenchS3):
    """bench-s3 with each connection capped at `conn_rate` MB/s."""

    def __init__(self, work, conn_rate):
        self.conn_rate = conn_rate
        super().__init__(work)

    def start(self, work):
        root = work / "bench-s3-root"
        root.mkdir()
        return subprocess.Popen([str(BENCH_S3), f"127.0.0.1:{self.port}", str(root), ACCESS_KEY, SECRET_KEY,
                                 "--conn-rate", str(self.conn_rate)],
                                stdout=open(self.log_path, "w"), stderr=open(work / "bench-s3.err", "w"))


def make_bundle(work, mb):
    """An incompressible .tar.zst of `mb` MB: 1,000 small random files, then 8 MiB random
    files and one shorter to make up the size."""
    tar_path, zst = work / f"bundle-{mb}.tar", work / f"bundle-{mb}.tar.zst"
    with tarfile.open(tar_path, "w") as tar:
        left = mb * 1_000_000
        for i in range(1000):
            data = os.urandom(1024 + i % 3072)
            add(tar, f"app/conf/c{i % 10}/f{i:04}.txt", data)
            left -= len(data) + 1024
        i = 0
        while left > 2048:
            data = os.urandom(min(8 * MIB, left - 1024))
            add(tar, f"app/lib/part-{i:03}.bin", data)
            left -= len(data) + 1024
            i += 1
    subprocess.run(["zstd", "-3", "-q", "-f", "--rm", str(tar_path), "-o", str(zst)], check=True)
    return zst


def add(tar, name, data):
    import io
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def upload(server, path):
    import boto3
    s3 = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="bench")
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    with open(path, "rb") as body:
        s3.put_object(Bucket="bench", Key=f"bundle/{path.name}", Body=body, ChecksumAlgorithm="CRC32")


def seed_state(state, url, dest, parts_in_flight):
    """The state dir as the metadata stage leaves it, with one bootstage.sync entry."""
    state.mkdir(parents=True, exist_ok=True)
    entry = {"from": url, "to": str(dest)}
    if parts_in_flight:
        entry["parts_in_flight"] = parts_in_flight
    (state / "params.json").write_text(json.dumps({"bootstage": {"sync": [entry]}}))
    (state / "instance.json").write_text('{"source":"flags","instance_id":"i-1"}')
    (state / "params.env").write_text("")
    (state / "hooks.env").write_text("")


FLOOR = "floor: the server's own pace (bench-floor, 8 x 8 MiB ranges)"
TOOLS = [FLOOR, "bootstage, ranged (8 x 8 MiB)", "bootstage, one stream", "aws s3 cp + tar -x (default: 10 x 8 MiB)",
         "aws s3 cp + tar -x (8 at once)", "s5cmd cp + tar -x (default: 5 x 50 MiB)", "s5cmd cp + tar -x (8 x 8 MiB)"]


def argv_for(tool, server, work, name, dest, aws_config, size=0):
    url = f"s3://bench/bundle/{name}"
    if tool == FLOOR:
        # The same ranged GETs as bootstage's defaults, bytes discarded: no unpacking, no
        # checksum, no files. The destination gets the 1,000 files the check below counts
        # from nowhere: this row is the server's, not a tool's.
        ranges = "".join(f"bundle/{name} bytes={o}-{min(o + 8 * MIB, size) - 1}\n" for o in range(0, size, 8 * MIB))
        (work / "ranges").write_text(ranges)
        return ["sh", "-c", f"{BENCH_FLOOR} {server.url} bench 8 {ACCESS_KEY} {SECRET_KEY} < {work / 'ranges'} >/dev/null"], {}
    archive = work / "download.tar.zst"
    untar = f"mkdir -p {dest} && tar --zstd -xf {archive} -C {dest} && rm -f {archive}"
    if tool.startswith("bootstage"):
        state = work / "state"
        shutil.rmtree(state, ignore_errors=True)
        seed_state(state, url, dest, 1 if "one stream" in tool else None)
        return [str(BIN), "--state-dir", str(state), "s3-sync", "--sync-timeout", "10m"], {}
    if tool.startswith("aws"):
        env = {"AWS_CONFIG_FILE": str(aws_config)} if "8 at once" in tool else {}
        return ["sh", "-c", f"aws s3 cp --only-show-errors --endpoint-url {server.url} {url} {archive} && {untar}"], env
    if tool.startswith("s5cmd"):
        flags = "--concurrency 8 --part-size 8" if "8 x 8" in tool else ""
        return ["sh", "-c", f"s5cmd --endpoint-url {server.url} cp {flags} {url} {archive} && {untar}"], {}
    raise ValueError(tool)


def strace_counts(argv, env, work):
    """(all system calls, openat calls, directory openat calls) of one run under strace -f."""
    out = Path(work) / "strace.out"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=all", "-o", str(out), *argv], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    calls = [l for l in out.read_text().splitlines() if "(" in l and not l.split()[1].startswith(("+++", "---"))]
    names = [l.split(None, 1)[1].split("(", 1)[0] for l in calls if len(l.split(None, 1)) > 1]
    openat = [l for l in calls if " openat(" in l]
    return len(names), len(openat), sum("O_DIRECTORY" in l for l in openat)


def resync(a):
    import random
    before = Path(a.resync).resolve()
    binaries = {"before": before, "after": BIN}
    rows = []
    with benchlib.scratch() as tmp:
        work = Path(tmp)
        server = BenchS3(work)
        try:
            env = env_for(server)
            s3, objects = benchlib.build_tree(server, False)
            keys = sorted(k for k in objects if k.endswith(".txt"))[:10]
            def change(seed):
                rng = random.Random(seed)
                for n, key in enumerate(keys):
                    size = len(objects[key]) + (0 if n < 5 else 17)
                    objects[key] = rng.randbytes(size)
                    s3.put_object(Bucket="bench", Key=key, Body=objects[key])
            tools = {name: [str(b), "--state-dir", str(work / name / "state"), "s3-sync", "--from", "s3://bench/tree/",
                            "--to", str(work / name / "tree")] for name, b in binaries.items()}
            tools["aws s3 sync"] = ["aws", "s3", "sync", "--delete", "--only-show-errors", "--endpoint-url", server.url,
                                    "s3://bench/tree/", str(work / "aws")]
            for argv in tools.values():
                benchlib.run(argv, env, work)
            cpu = {name: [] for name in tools}
            for round_ in range(a.runs):
                change(100 + round_)
                for name, argv in tools.items():
                    cpu[name].append(benchlib.run(argv, env, work)[1])
            change(999)
            for name, argv in tools.items():
                calls, openat, dirs = strace_counts(argv, env, work) if name != "aws s3 sync" else ("-", "-", "-")
                rows.append((name, statistics.median(cpu[name]), calls, openat, dirs))
                print(f"  {name:12} cpu {rows[-1][1]:.3f} s  syscalls {calls}  openat {openat} ({dirs} directories)", flush=True)
        finally:
            server.stop()
    table = ["The 10-changed re-sync of a 2,020-object prefix (bench-sync.py's tree; 10 small objects changed, 5 "
             f"keeping their size), bench-s3 on 127.0.0.1 without a rate cap, tmpfs; CPU: median of {a.runs} rounds; "
             "system calls: one more round under `strace -f` (every thread). `scripts/bench-bundle.py --resync BEFORE`. "
             "before: without the directory cache (each file's parent directories opened again, per step); "
             "after: `fsat::Dirs`, each directory opened once per pass.", "",
             "| client | CPU (s) | system calls | openat | of which directories |", "|---|---:|---:|---:|---:|"]
    for name, c, calls, openat, dirs in rows:
        table.append(f"| {name} | {c:.3f} | {calls} | {openat} | {dirs} |")
    print("\n".join(table))
    if not a.no_write:
        benchlib.write_section("resync", "A re-sync of 10 changed files: the directory cache", "\n".join(table))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--resync", metavar="BEFORE", help="compare the 10-changed re-sync with this binary")
    p.add_argument("--sizes", default="177,1024", help="bundle sizes in MB")
    p.add_argument("--conn-rate", type=float, default=90)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tools", default=None, help="comma-separated indexes into the tool list")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.resync:
        return resync(a)
    if not BIN.exists() or not BENCH_S3.exists():
        raise SystemExit(f"no release build at {BIN.parent}: CARGO_TARGET_DIR=… cargo build --release --bin bootstage -p bench-s3")
    subprocess.run([str(benchlib.ROOT / "scripts" / "install-bench-deps.sh")], check=True)
    tools = [TOOLS[int(i)] for i in a.tools.split(",")] if a.tools else TOOLS
    rows = []
    with benchlib.scratch() as tmp:
        work = Path(tmp)
        server = PacedS3(work, a.conn_rate)
        env = env_for(server)
        aws_config = work / "aws-config"
        aws_config.write_text("[default]\ns3 =\n  max_concurrent_requests = 8\n  multipart_chunksize = 8MB\n"
                              "  multipart_threshold = 16MB\n")
        try:
            for mb in [int(s) for s in a.sizes.split(",")]:
                bundle = make_bundle(work, mb)
                size = bundle.stat().st_size
                upload(server, bundle)
                bundle.unlink()
                print(f"bundle of {size / 1e6:.0f} MB", flush=True)
                for tool in tools:
                    samples = []
                    for _ in range(a.runs):
                        # The destination and, beside it, bootstage's generations and manifest.
                        shutil.rmtree(work / "out", ignore_errors=True)
                        dest = work / "out" / "dest"
                        dest.parent.mkdir()
                        argv, extra = argv_for(tool, server, work, bundle.name, dest, aws_config, size)
                        before = len(server.requests())
                        samples.append(benchlib.run(argv, {**env, **extra}, work))
                        logged = server.requests()[before:]
                        gets = [l for l in logged if l.startswith("GET /bench/bundle/")]
                        ranged = [l for l in gets if " 206 " in l]
                        heads = [l for l in logged if l.startswith("HEAD /bench/bundle/")]
                        files = sum(len(f) for _, _, f in os.walk(dest))
                        if tool != FLOOR and files < 1000:
                            raise SystemExit(f"{tool}: only {files} files unpacked")
                    wall, cpu, rss = (statistics.median(s[i] for s in samples) for i in range(3))
                    row = (f"{size / 1e6:.0f} MB", tool, wall, size / wall / 1e6, cpu, rss, len(gets), len(ranged), len(heads))
                    print("  %-10s %-44s wall %6.2f s  %6.0f MB/s  cpu %6.2f s  rss %6.0f MiB  GETs %d (%d ranged), HEADs %d" % row,
                          flush=True)
                    rows.append(row)
                shutil.rmtree(work / "out", ignore_errors=True)
        finally:
            server.stop()
    table = [f"bench-s3 on 127.0.0.1 at --conn-rate {a.conn_rate:g} MB/s per connection; tmpfs; median of "
             f"{a.runs} runs; {os.cpu_count()} cores shared by client and server. "
             "`scripts/bench-bundle.py` (this table: `--sizes " + a.sizes + "`).", "",
             "| bundle | tool | wall (s) | MB/s | client CPU (s) | peak RSS (MiB) | GETs (ranged), HEADs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for size, tool, wall, rate, cpu, rss, gets, ranged, heads in rows:
        table.append(f"| {size} | {tool} | {wall:.2f} | {rate:.0f} | {cpu:.2f} | {rss:.0f} | {gets} ({ranged}), {heads} |")
    print("\n".join(table))
    if not a.no_write:
        benchlib.write_section("bundle", "A large bundle: parallel ranged GETs", "\n".join(table))


if __name__ == "__main__":
    main()
