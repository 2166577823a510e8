#!/usr/bin/env python3
"""Fleet benchmark: N instances booting at once against one S3 server, the code as a prefix
and as one bundle, beside what an operator's script would otherwise run, in one run.

Every "instance" is its own process with its own destination and state dir, all started
together against one bench-s3 (crates/bench-s3) on 127.0.0.1, for N = 1, 10, 50. The tree
is ../shared/README.md section 3's: 2,000 files of 1-8 KiB and 20 of 8 MiB, as the prefix
tree/ and as one tree.tar.zst (zstd -3; the random bytes barely compress). Per N and method:
- wall until every instance is done, and p50/p99 of each instance's own time;
- requests the server logged, and bytes it served (bodies of the GETs);
- client CPU (user+sys) summed over the instances, from wait4.
Methods: bootstage s3-sync of the prefix; bootstage s3-sync of the bundle; the same bundle
again with nothing changed (one conditional GET each, answered 304); `aws s3 cp` of the
archive then `tar --zstd -x`; `aws s3 sync` of the prefix.

Usage: scripts/bench-fleet.py [--sizes 1,10,50] [--small]
  --small: 200 files + 2 x 8 MiB, for a quick look (BENCHMARKS.md is left alone)
Writes the fleet section of BENCHMARKS.md.
"""
import argparse, os, shutil, subprocess, sys, tarfile, tempfile, time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import BIN, ROOT, BenchS3, build_tree, env_for  # noqa: E402

METHODS = ["bootstage, prefix", "bootstage, bundle", "bootstage, bundle unchanged", "aws s3 cp + tar -x", "aws s3 sync, prefix"]


def argv_for(method, server, inst):
    """The command one instance runs; `inst` is its own directory."""
    state, dest = inst / "state", inst / "dest"
    if method == "bootstage, prefix":
        return [str(BIN), "--state-dir", str(state), "s3-sync", "--from", "s3://bench/tree/", "--to", str(dest)]
    if method.startswith("bootstage, bundle"):
        return [str(BIN), "--state-dir", str(state), "s3-sync", "--from", "s3://bench/bundle/tree.tar.zst", "--to", str(dest)]
    if method == "aws s3 cp + tar -x":
        script = (f"aws s3 cp --only-show-errors --endpoint-url {server.url} s3://bench/bundle/tree.tar.zst {inst}/tree.tar.zst"
                  f" && mkdir -p {dest} && tar --zstd -xf {inst}/tree.tar.zst -C {dest}")
        return ["sh", "-c", script]
    if method == "aws s3 sync, prefix":
        return ["aws", "s3", "sync", "--only-show-errors", "--endpoint-url", server.url, "s3://bench/tree/", str(dest)]
    raise ValueError(method)


def fleet(method, server, env, work, n):
    """Starts n instances together; returns (wall, per-instance times, cpu, how many failed).
    A failed instance is counted, not fatal: at N = 50 aws s3 sync has failed one."""
    os.sync()
    insts = [work / f"i{i}" for i in range(n)]
    for inst in insts:
        inst.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    # The Popen objects are kept: one dropped while its process runs is reaped by the next
    # Popen() (subprocess._cleanup), and wait4 below would then wait for it forever.
    procs = {}
    for inst in insts:
        p = subprocess.Popen(argv_for(method, server, inst), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs[p.pid] = (p, inst)
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
    return time.monotonic() - start, times, cpu, failed


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


def forget(tree):
    """Removes a method's trees, then lets ext4 forget them. On ext4 without a journal (this
    machine's root) the kernel skips inodes deleted in the last 5 s (35 s while their
    blocks are dirty) when it allocates new ones, so creating thousands of files right after
    deleting thousands costs several times the CPU; the next method must not pay for this
    one's cleanup."""
    shutil.rmtree(tree, ignore_errors=True)
    os.sync()
    time.sleep(6)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage", "-p", "bench-s3"], cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = BenchS3(work)
        try:
            env = env_for(server)
            s3, objects = build_tree(server, args.small)
            bundle = make_bundle(objects, work)
            s3.put_object(Bucket="bench", Key="bundle/tree.tar.zst", Body=bundle)
            tree_mb = sum(len(v) for v in objects.values()) / 1e6
            for n in sizes:
                for method in METHODS:
                    run_dir = work / f"n{n}-{METHODS.index(method)}"
                    if method == "bootstage, bundle unchanged":
                        run_dir = work / f"n{n}-{METHODS.index('bootstage, bundle')}"
                    before = len(server.requests())
                    wall, times, cpu, failed = fleet(method, server, env, run_dir, n)
                    lines = server.requests()[before:]
                    served = served_bytes(lines)
                    label = f"{method} ({failed} of {n} failed)" if failed else method
                    rows.append((n, label, wall, pct(times, 50), pct(times, 99), len(lines), served, cpu))
                    print(f"N={n:3} {method:30} wall {wall:7.2f} s  p50 {pct(times, 50):7.2f}  p99 {pct(times, 99):7.2f}"
                          f"  {len(lines):7} requests  {served / 1e6:9.0f} MB  cpu {cpu:7.2f} s", flush=True)
                    if method != "bootstage, bundle":
                        forget(run_dir)
                forget(work / f"n{n}-{METHODS.index('bootstage, bundle')}")
        finally:
            server.stop()
    lines = [
        f"bench-s3 on 127.0.0.1; {len(objects)} objects, {tree_mb:.0f} MB, as a prefix and as one"
        f" {len(bundle) / 1e6:.0f} MB tree.tar.zst; {os.cpu_count()} cores. N instances start together, each its own"
        " process, destination and state dir. Wall: until the last is done; p50/p99: each instance's own time;"
        " requests: the server's log (a 304 is a request with no body); bytes: object bodies served;"
        " CPU: user+sys summed over the instances.",
        "",
        "| N | method | wall | p50 | p99 | requests | bytes served | client CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, method, wall, p50, p99, reqs, served, cpu in rows:
        lines.append(f"| {n} | {method} | {wall:.2f} s | {p50:.2f} s | {p99:.2f} s | {reqs} | {served / 1e6:.0f} MB | {cpu:.2f} s |")
    by = {(n, m.split(" (")[0]): (wall, reqs) for n, m, wall, _, _, reqs, _, _ in rows}
    lines.append("")
    for n in sizes:
        prefix, bundle_ = by[(n, "bootstage, prefix")], by[(n, "bootstage, bundle")]
        cp = by[(n, "aws s3 cp + tar -x")]
        lines.append(f"N = {n}: the bundle took {bundle_[0] / prefix[0]:.2f} of the prefix sync's wall time and"
                     f" {bundle_[0] / cp[0]:.2f} of aws s3 cp + tar -x's; {bundle_[1]} requests for the bundle,"
                     f" {prefix[1]} for the prefix; unchanged: {by[(n, 'bootstage, bundle unchanged')][1]} requests, no body.")
    text = "\n".join(lines)
    print(text)
    if not args.small and sizes == [1, 10, 50]:
        benchlib.write_section("fleet", "Fleet: a prefix or a bundle per instance (`scripts/bench-fleet.py`)", text)


if __name__ == "__main__":
    main()
