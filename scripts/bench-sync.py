#!/usr/bin/env python3
"""Benchmark of s3-sync beside aws s3 sync, s5cmd sync and rclone sync, in one run.

The tree (as in ../shared/README.md section 3): 2,000 files of 1-8 KiB in nested dirs plus
20 files of 8 MiB, served on 127.0.0.1 by each of two S3-compatible servers in turn:
- moto, the server the tests use. It answers each request on a new connection under Python's
  GIL, ~4 ms per small object, so every client's full sync sits near the same ~8 s floor.
- bench-s3 (crates/bench-s3): s3s-fs, a Rust S3 server on the file system, with TCP_NODELAY,
  fast enough that the clients' own costs show.
Three phases per server, every tool into its own destination: full sync; no-change re-sync;
then 10 objects change (5 keeping their size) and each tool syncs again. Reported per tool
and phase: wall time, client CPU (user+sys) and peak RSS (GNU time), requests (the server's
request log), and for the last phase how many of the 10 changes reached the destination.
The floor row is the server's own pace: bench-floor (crates/bench-s3) GETs every object at
bootstage's concurrency and discards the bytes, with no listing and no files; what bootstage
takes beyond it is bootstage's.

Everything (the servers' files, every destination) is on tmpfs: see benchlib.scratch for why.

Every tool runs the three phases in each of several rounds (fresh destinations, new
changes), and the table gives medians: on 2 cores, one run of the fastest tools differs
from the next by more than they differ from each other.

Usage: scripts/bench-sync.py [--small] [--rounds N] [--server moto|bench-s3]...
  --small: 200 files + 2 x 8 MiB, for a quick look (BENCHMARKS.md is left alone)
  --rounds: how many rounds (default 3)
  --server: only these servers (default: both)
Writes the sync section of BENCHMARKS.md. Installs the rivals first (scripts/install-bench-deps.sh).
"""
import argparse, os, random, shutil, subprocess, sys
from statistics import median
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import BENCH_FLOOR, BIN, ROOT, SERVERS, build_tree, env_for, run  # noqa: E402

PHASES = ["full", "no change", "10 changed"]
FLOOR = "floor: the server's own pace (bench-floor)"


# bootstage's requests in flight (--concurrency default): the matched rows give each rival
# the same, as a careful operator would; the default rows are beside them, labelled.
MATCHED = 16
AWS = "aws s3 sync, default (10 requests)"
AWS_MATCHED = f"aws s3 sync, max_concurrent_requests = {MATCHED}"
S5CMD_MATCHED = f"s5cmd sync --numworkers {MATCHED}"
RCLONE_MATCHED = f"rclone sync --transfers {MATCHED} --checkers {MATCHED}"
RCLONE_FAST_MATCHED = f"rclone sync --transfers {MATCHED} --checkers {MATCHED} --fast-list --use-server-modtime"
# aws-cli's CRT transfer client (`preferred_transfer_client = crt`) is aws-cli v2's (and
# v1's with awscrt); the row is added only where the installed aws-cli has the setting.


def aws_has_crt():
    probe = subprocess.run([sys.executable, "-c", "import awscli.customizations.s3.factory as f, inspect; print('crt' in inspect.getsource(f))"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "True"


def tools(server, work):
    """name -> (argv, destination directory the files land in, extra environment)."""
    w = Path(work)
    config = w / f"aws-{MATCHED}.config"
    config.write_text(f"[default]\ns3 =\n    max_concurrent_requests = {MATCHED}\n")
    crt = w / "aws-crt.config"
    crt.write_text(f"[default]\ns3 =\n    preferred_transfer_client = crt\n    max_concurrent_requests = {MATCHED}\n")
    aws = lambda dest: ["aws", "s3", "sync", "--delete", "--only-show-errors", "--endpoint-url", server.url, "s3://bench/tree/", str(dest)]
    out = {
        "bootstage": ([str(BIN), "--state-dir", f"{w}/bs-state", "s3-sync", "--from", "s3://bench/tree/", "--to", f"{w}/bootstage/tree"], w / "bootstage/tree", {}),
        AWS: (aws(w / "aws"), w / "aws", {}),
        AWS_MATCHED: (aws(w / "aws16"), w / "aws16", {"AWS_CONFIG_FILE": str(config)}),
        "s5cmd sync, default (256 workers)": (["s5cmd", "--endpoint-url", server.url, "sync", "--delete", "s3://bench/tree/*", f"{w}/s5cmd/"], w / "s5cmd", {}),
        S5CMD_MATCHED: (["s5cmd", "--numworkers", str(MATCHED), "--endpoint-url", server.url, "sync", "--delete", "s3://bench/tree/*", f"{w}/s5cmd16/"], w / "s5cmd16", {}),
        "rclone sync, default (4 transfers, 8 checkers)": (["rclone", "sync", "s3:bench/tree", f"{w}/rclone"], w / "rclone", {}),
        RCLONE_MATCHED: (["rclone", "sync", "--transfers", str(MATCHED), "--checkers", str(MATCHED), "s3:bench/tree", f"{w}/rclone16"], w / "rclone16", {}),
        "rclone sync --fast-list --use-server-modtime, default transfers": (["rclone", "sync", "--fast-list", "--use-server-modtime", "s3:bench/tree", f"{w}/rclone-fast"], w / "rclone-fast", {}),
        RCLONE_FAST_MATCHED: (["rclone", "sync", "--transfers", str(MATCHED), "--checkers", str(MATCHED), "--fast-list", "--use-server-modtime", "s3:bench/tree", f"{w}/rclone-fast16"], w / "rclone-fast16", {}),
    }
    if aws_has_crt():
        out[f"aws s3 sync, CRT client, {MATCHED} requests"] = (aws(w / "aws-crt"), w / "aws-crt", {"AWS_CONFIG_FILE": str(crt)})
    return out


def ensure_peers():
    subprocess.run([str(ROOT / "scripts/install-bench-deps.sh")], check=True)


def change_ten(s3, objects, seed):
    """5 same-size and 5 size-changing edits to small files; `objects` follows them."""
    keys = sorted(k for k in objects if k.endswith(".txt"))[:10]
    rng = random.Random(seed)
    changed = {}
    for n, key in enumerate(keys):
        size = len(objects[key]) if n < 5 else len(objects[key]) + 17
        body = rng.randbytes(size)
        s3.put_object(Bucket="bench", Key=key, Body=body)
        changed[key] = body
    objects.update(changed)
    return changed


def bench_server(server_cls, small, rounds, work, results):
    """Against one fresh server, `rounds` times: every tool, every phase, each round into
    fresh destinations. Appends to results[(server, tool, phase)] one measurement a round."""
    work = Path(work) / server_cls.name
    work.mkdir()
    server = server_cls(work)
    try:
        env = env_for(server)
        s3, objects = build_tree(server, small)
        for round_ in range(rounds):
            dests = work / f"round-{round_}"
            dests.mkdir()
            changed = None
            for phase in PHASES:
                if phase == "10 changed":
                    changed = change_ten(s3, objects, seed=7 + round_)
                if phase == "full":
                    # The floor: every object's GET at bootstage's concurrency, bytes discarded.
                    keys = work / "keys.txt"
                    keys.write_text("".join(f"{k}\n" for k in sorted(objects)))
                    argv = [str(BENCH_FLOOR), server.url, "bench", "16", benchlib.ACCESS_KEY, benchlib.SECRET_KEY]
                    before = len(server.requests())
                    wall, cpu, rss = run(argv, env, work, stdin=keys)
                    requests = len(server.requests()) - before
                    results.setdefault((server.name, FLOOR, phase), []).append((wall, cpu, rss, requests, None))
                    print(f"{server.name:8} {round_} {phase:10} {'floor':40} {wall:6.2f} s  cpu {cpu:5.2f} s  {requests:5} requests", flush=True)
                for name, (argv, dest, extra) in tools(server, dests).items():
                    before = len(server.requests())
                    wall, cpu, rss = run(argv, {**env, **extra}, work)
                    requests = len(server.requests()) - before
                    caught = None
                    if changed:
                        caught = sum((dest / k[len("tree/"):]).read_bytes() == v for k, v in changed.items())
                    results.setdefault((server.name, name, phase), []).append((wall, cpu, rss, requests, caught))
                    print(f"{server.name:8} {round_} {phase:10} {name:40} {wall:6.2f} s  cpu {cpu:5.2f} s  rss {rss:6.1f} MB  {requests:5} requests"
                          + (f"  caught {caught}/10" if changed else ""), flush=True)
    finally:
        server.stop()
    return objects


def table(server, results, objects):
    total_mb = sum(len(v) for v in objects.values()) / 1e6
    names = [n for s, n, p in results if s == server and p == "full"]
    rounds = len(results[(server, names[0], "full")])
    lines = [
        f"**{server}**: {len(objects)} objects, {total_mb:.0f} MB on 127.0.0.1; {os.cpu_count()} cores; files on tmpfs; {rounds} rounds."
        " Wall: median (min-max); client CPU (user+sys): median; peak RSS: the largest; requests: median; changes caught: the fewest.",
        "",
        "| tool | full sync | no-change re-sync | 10 changed (5 same-size) | changes caught |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        cells = []
        for phase in PHASES:
            if (server, n, phase) not in results:
                cells.append("-")
                continue
            walls, cpus, rsss, reqs, _ = zip(*results[(server, n, phase)])
            cells.append(f"{median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}), CPU {median(cpus):.2f} s,"
                         f" {max(rsss):.0f} MB, {median(reqs):.0f} req")
        caught = [r[4] for r in results.get((server, n, "10 changed"), [])]
        cells.append(f"{min(caught)} of 10" if caught else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    full = {n: median(r[0] for r in results[(server, n, "full")]) for n in names}
    fastest = min((n for n in names if n.startswith(("s5cmd", "rclone"))), key=full.get)
    fastest_matched = min((n for n in (S5CMD_MATCHED, RCLONE_MATCHED, RCLONE_FAST_MATCHED) if n in full), key=full.get)
    lines += [
        "",
        f"Full sync, medians: bootstage took {full['bootstage'] / full[AWS_MATCHED]:.2f} of the wall time of {AWS_MATCHED}"
        f" ({full['bootstage'] / full[AWS]:.2f} of {AWS});"
        f" at matched concurrency the fastest of s5cmd and rclone ({fastest_matched}) took {full[fastest_matched] / full['bootstage']:.2f} times bootstage's,"
        f" and the fastest in any configuration ({fastest}) {full[fastest] / full['bootstage']:.2f} times;"
        f" bootstage took {full['bootstage'] / full[FLOOR]:.2f} times the floor (the server's own pace for the same GETs at {MATCHED} at once).",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", action="append", choices=list(SERVERS))
    args = ap.parse_args()
    servers = args.server or list(SERVERS)
    ensure_peers()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "bootstage", "-p", "bench-s3"], cwd=ROOT, check=True)
    results = {}
    tables = []
    with benchlib.scratch() as work:
        for name in servers:
            objects = bench_server(SERVERS[name], args.small, args.rounds, work, results)
            tables.append(table(name, results, objects))
    text = "\n\n".join(tables)
    print(text)
    if not args.small and servers == list(SERVERS):
        benchlib.write_section("sync", "s3-sync stage (`scripts/bench-sync.py`)", text)


if __name__ == "__main__":
    main()
