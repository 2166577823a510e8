#!/usr/bin/env python3
"""Fleet benchmark: N instances booting at once against one S3 server, the code as a prefix
and as one bundle, beside what an operator's script would otherwise run, in one run.

Every "instance" is its own process with its own destination and state dir, all started
together against one bench-s3 (crates/bench-s3) on 127.0.0.1, for N = 1, 10, 50. The tree
is ../shared/README.md section 3's: 2,000 files of 1-8 KiB and 20 of 8 MiB, as the prefix
tree/ and as one tree.tar.zst (zstd -3; the random bytes barely compress). Per N and method:
- wall until every instance is done, and the median and the largest of each instance's
  own time (with at most 50 samples a "p99" would be the largest: it is labelled max);
- requests the server logged, and bytes it served (bodies of the GETs);
- client CPU (user+sys) summed over the instances, from wait4.
- the server's own CPU over the same time (it shares the cores with the instances).
Methods: bootstage s3-sync of the prefix; bootstage s3-sync of the bundle (its defaults:
ranged GETs, 8 MiB parts, 8 at once); the same bundle again with nothing changed (one
conditional GET each, answered 304); `aws s3 cp` of the archive then `tar --zstd -x`;
`aws s3 sync` of the prefix; and the matched pair: bootstage's bundle as one stream, and
`aws s3 cp` at 8 parts at once (`max_concurrent_requests = 8`; its default is 10).

Destinations and the archives `aws s3 cp` downloads are all on tmpfs (benchlib.scratch
says why): one file system for every method. Each archive is removed as soon as it is
unpacked, so 50 archives and 50 trees (2 x 8.8 GB at most) fit in this machine's memory.

Then the same at N = 50 as a model of a fleet of 1,000 at S3's request rate: a local
server does not throttle, so unthrottled the difference between a prefix and a bundle is
only the CPU each request costs. S3 serves about 5,500 GETs a second per prefix; shared
by 1,000 instances, each of the 50 here, standing for 20, gets 5,500 / 20 = 275 a second,
and bench-s3 answers 503 SlowDown beyond that. bootstage runs with --sync-timeout 30m
there, so that the prefix's time is measured rather than cut at the 5-minute default.
`aws s3 sync` is left out there: its 5 attempts a request would fail most instances, or
take the benchmark's whole time. Any fleet still running after 10 minutes is stopped and
its instances counted as failed.

Usage: scripts/bench-fleet.py [--sizes 1,10,50] [--small] [--no-throttled] [--methods 1,5,…] [--no-build]
  --small: 200 files + 2 x 8 MiB, for a quick look (BENCHMARKS.md is left alone)
  --no-build: run the binaries already in $CARGO_TARGET_DIR/release (e.g. two builds of
    committed code side by side, each in its own directory) instead of building this tree
Writes the fleet section of BENCHMARKS.md.
"""
import argparse, json, os, shutil, subprocess, sys, tarfile, tempfile, threading, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import BIN, ROOT, BenchS3, build_tree, env_for  # noqa: E402

METHODS = ["bootstage, prefix", "bootstage, bundle", "bootstage, bundle unchanged", "aws s3 cp + tar -x", "aws s3 sync, prefix",
           "bootstage, bundle, one stream", "aws s3 cp + tar -x (8 at once)"]
# The last two: bootstage's bundle as one GET stream (`parts_in_flight: 1`, as before ranged
# GETs), and aws-cli at bootstage's 8 parts at once (its default is 10): the matched pair.
MATCHED = METHODS[5:]


# The 1,000-instance model: S3's GETs per second per prefix, and how many instances each
# local one stands for.
S3_GET_RATE, FLEET, MODEL_N = 5500, 1000, 50
DEADLINE = 10 * 60


def argv_for(method, server, inst, downloads, timeout):
    """The command one instance runs; `inst` is its own directory (tmpfs), `downloads` a
    directory on disk for what aws s3 cp fetches."""
    state, dest = inst / "state", inst / "dest"
    sync = [str(BIN), "--state-dir", str(state), "s3-sync", "--sync-timeout", timeout]
    if method == "bootstage, prefix":
        return [*sync, "--from", "s3://bench/tree/", "--to", str(dest)]
    if method == "bootstage, bundle, one stream":
        # The one-stream setting exists in user-data only: the state dir as the metadata
        # stage leaves it, with one bootstage.sync entry.
        state.mkdir(parents=True, exist_ok=True)
        entry = {"from": "s3://bench/bundle/tree.tar.zst", "to": str(dest), "parts_in_flight": 1}
        (state / "params.json").write_text(json.dumps({"bootstage": {"sync": [entry]}}))
        (state / "instance.json").write_text('{"source":"flags","instance_id":"i-1"}')
        (state / "params.env").write_text("")
        (state / "hooks.env").write_text("")
        return sync
    if method.startswith("bootstage, bundle"):
        return [*sync, "--from", "s3://bench/bundle/tree.tar.zst", "--to", str(dest)]
    if method.startswith("aws s3 cp + tar -x"):
        archive = downloads / f"{inst.parent.name}-{inst.name}.tar.zst"
        config = f"AWS_CONFIG_FILE={downloads.parent / 'aws-config-8'} " if "8 at once" in method else ""
        script = (f"{config}aws s3 cp --only-show-errors --endpoint-url {server.url} s3://bench/bundle/tree.tar.zst {archive}"
                  f" && mkdir -p {dest} && tar --zstd -xf {archive} -C {dest} && rm -f {archive}")
        return ["sh", "-c", script]
    if method == "aws s3 sync, prefix":
        return ["aws", "s3", "sync", "--only-show-errors", "--endpoint-url", server.url, "s3://bench/tree/", str(dest)]
    raise ValueError(method)


def fleet(method, server, env, work, downloads, n, timeout):
    """Starts n instances together; returns (wall, per-instance times, cpu, how many failed,
    server CPU). A failed instance is counted, not fatal: at N = 50 aws s3 sync has failed
    one. Instances still running after DEADLINE are killed, and so fail."""
    os.sync()
    insts = [work / f"i{i}" for i in range(n)]
    for inst in insts:
        inst.mkdir(parents=True, exist_ok=True)
    server_cpu = benchlib.cpu_seconds(server.proc.pid)
    start = time.monotonic()
    # The Popen objects are kept: one dropped while its process runs is reaped by the next
    # Popen() (subprocess._cleanup), and wait4 below would then wait for it forever.
    # Each instance is its own process group, so that the deadline stops `sh -c`'s aws and
    # tar too. killpg, not Popen.kill: that polls, and could reap a child behind wait4.
    procs = {}
    for inst in insts:
        p = subprocess.Popen(argv_for(method, server, inst, downloads, timeout), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs[p.pid] = (p, inst)

    def kill_the_rest():
        for pid in list(procs):
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
    stop = threading.Timer(DEADLINE, kill_the_rest)
    stop.start()
    times, cpu, failed = [], 0.0, 0
    while procs:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in procs:
            continue
        _, inst = procs.pop(pid)
        times.append(time.monotonic() - start)
        cpu += usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            failed += 1
            print(f"{method}: instance {inst.name} failed ({status})", flush=True)
    stop.cancel()
    return time.monotonic() - start, times, cpu, failed, benchlib.cpu_seconds(server.proc.pid) - server_cpu


def served_bytes(lines):
    """Body bytes of the GETs answered 200 or 206 among logged lines (`GET /b/k 200 1234`)."""
    total = 0
    for line in lines:
        method, _, status, length = (line.split(" ") + ["", "", ""])[:4]
        if method == "GET" and status in ("200", "206") and length.isdigit():
            total += int(length)
    return total


def make_bundle(objects, work):
    """tree.tar.zst of the tree as the prefix holds it, names relative to tree/."""
    src = work / "bundle-src"
    for key, body in objects.items():
        path = src / key.removeprefix("tree/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    tar = work / "tree.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname=".")
    subprocess.run(["zstd", "-q", "-3", "-f", str(tar), "-o", str(work / "tree.tar.zst")], check=True)
    shutil.rmtree(src)
    tar.unlink()
    return (work / "tree.tar.zst").read_bytes()




def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def section(server, env, work, downloads, sizes, methods, timeout, title, rows):
    """Each of `methods` at each N against `server`; a row each, printed as it is measured."""
    for n in sizes:
        for method in methods:
            run_dir = work / f"{title}-n{n}-{METHODS.index(method)}"
            if method == "bootstage, bundle unchanged":
                run_dir = work / f"{title}-n{n}-{METHODS.index('bootstage, bundle')}"
            before = len(server.requests())
            wall, times, cpu, failed, server_cpu = fleet(method, server, env, run_dir, downloads, n, timeout)
            lines = server.requests()[before:]
            served = served_bytes(lines)
            slowed = sum(1 for line in lines if line.split(" ")[2:3] == ["503"])
            label = f"{method} ({failed} of {n} failed)" if failed else method
            rows.append((n, label, wall, pct(times, 50), max(times), len(lines), slowed, served, cpu, server_cpu))
            print(f"{title} N={n:3} {method:30} wall {wall:7.2f} s  p50 {pct(times, 50):7.2f}  max {max(times):7.2f}"
                  f"  {len(lines):7} requests ({slowed} SlowDown)  {served / 1e6:9.0f} MB  cpu {cpu:7.2f} s"
                  f"  server {server_cpu:7.2f} s", flush=True)
            # The bundle's trees stay for "unchanged", then go: two sets of 50 trees
            # would not fit in memory.
            if method != "bootstage, bundle":
                shutil.rmtree(run_dir, ignore_errors=True)
            for archive in downloads.iterdir():
                archive.unlink()


def table(rows, sizes, throttled):
    lines = [
        "| N | method | wall | p50 | max | requests (503 SlowDown) | bytes served | client CPU | server CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, method, wall, p50, most, reqs, slowed, served, cpu, server_cpu in rows:
        lines.append(f"| {n} | {method} | {wall:.2f} s | {p50:.2f} s | {most:.2f} s | {reqs} ({slowed}) |"
                     f" {served / 1e6:.0f} MB | {cpu:.2f} s | {server_cpu:.2f} s |")
    by = {(n, m.split(" (")[0]): (wall, reqs) for n, m, wall, _, _, reqs, *_ in rows}
    lines.append("")
    for n in sizes:
        if not all((n, m) in by for m in ["bootstage, prefix", "bootstage, bundle", "aws s3 cp + tar -x",
                                          "bootstage, bundle unchanged"]):
            continue
        prefix, bundle_ = by[(n, "bootstage, prefix")], by[(n, "bootstage, bundle")]
        cp = by[(n, "aws s3 cp + tar -x")]
        where = f"N = {n}, throttled" if throttled else f"N = {n}"
        lines.append(f"{where}: the bundle took {bundle_[0] / prefix[0]:.2f} of the prefix sync's wall time and"
                     f" {bundle_[0] / cp[0]:.2f} of aws s3 cp + tar -x's; {bundle_[1]} requests for the bundle,"
                     f" {prefix[1]} for the prefix; unchanged: {by[(n, 'bootstage, bundle unchanged')][1]} requests, no body.")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--no-throttled", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--methods", default=None,
                    help="comma-separated indexes into METHODS (default: all); 'bundle unchanged' needs 'bundle'")
    args = ap.parse_args()
    chosen = [METHODS[int(i)] for i in args.methods.split(",")] if args.methods else METHODS
    sizes = [int(s) for s in args.sizes.split(",")]
    rate = S3_GET_RATE * MODEL_N // FLEET
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage", "-p", "bench-s3"], cwd=ROOT, check=True)
    print(f"binaries: {BIN} and {benchlib.BENCH_S3}", flush=True)
    rows, throttled = [], []
    with benchlib.scratch() as tmp:
        work, downloads = Path(tmp), Path(tmp) / "downloads"
        downloads.mkdir()
        (work / "aws-config-8").write_text("[default]\ns3 =\n  max_concurrent_requests = 8\n")
        runs = [(None, "5m", sizes, chosen, "unthrottled", rows)]
        if not args.no_throttled:
            runs.append((rate, "30m", [MODEL_N], [m for m in chosen if m != "aws s3 sync, prefix"], "throttled", throttled))
        for get_rate, timeout, these, methods, label, into in runs:
            home = work / label
            home.mkdir()
            server = BenchS3(home, get_rate=get_rate)
            try:
                env = env_for(server)
                s3, objects = build_tree(server, args.small)
                bundle = make_bundle(objects, home)
                s3.put_object(Bucket="bench", Key="bundle/tree.tar.zst", Body=bundle)
                section(server, env, work, downloads, these, methods, timeout, label, into)
            finally:
                server.stop()
                shutil.rmtree(home, ignore_errors=True)
    tree_mb = sum(len(v) for v in objects.values()) / 1e6
    lines = [
        f"bench-s3 on 127.0.0.1; {len(objects)} objects, {tree_mb:.0f} MB, as a prefix and as one"
        f" {len(bundle) / 1e6:.0f} MB tree.tar.zst; {os.cpu_count()} cores, shared by the server and every instance;"
        " destinations on tmpfs. N instances start together, each its own process, destination and state dir."
        " Wall: until the last is done; p50/max: each instance's own time; requests: the server's log (a 304"
        " is a request with no body); bytes: object bodies served; client CPU: user+sys summed over the"
        " instances; server CPU: bench-s3's over the same time.",
        "",
        *table(rows, sizes, False),
    ]
    if throttled:
        lines += [
            "",
            f"**A fleet of {FLEET} at S3's request rate.** {MODEL_N} instances, each standing for {FLEET // MODEL_N}:"
            f" bench-s3 serves {rate} GETs a second ({S3_GET_RATE} per prefix shared by {FLEET} instances) and"
            " answers the rest 503 SlowDown. bootstage with --sync-timeout 30m; aws s3 sync not run.",
            "",
            *table(throttled, [MODEL_N], True),
        ]
    text = "\n".join(lines)
    print(text)
    if not args.small and sizes == [1, 10, 50] and throttled and chosen == METHODS:
        benchlib.write_section("fleet", "Fleet: a prefix or a bundle per instance (`scripts/bench-fleet.py`)", text)


if __name__ == "__main__":
    main()
