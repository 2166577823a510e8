#!/usr/bin/env python3
"""Release benchmarks (#28). Two of them, each its own subcommand:

pointer: how long a release takes to reach a watching instance. One `s3-sync --watch 10m`
  watcher (a release build, woken by SQS only: the 10-minute poll never falls in a run)
  syncs a release pointer, `{"from": {"ssm": "/bench/web/release"}}`, into a destination,
  with `bootstage.watch.sqs` set and an `--on-change` hook that writes to a FIFO. Each run:
  a new incompressible .tar.zst release of --size MB (a `version` file, 1,000 small files,
  then 8 MiB ones: bench-bundle.py's bundle) is uploaded (untimed), then timed from just
  before SSM's PutParameter (the pointer set to it) until the hook has run, the EventBridge
  "Parameter Store Change" event for the parameter sent to the queue right after the put,
  as EventBridge would deliver it (moto routes none). The time includes the put itself,
  the SendMessage, the SQS long poll's wake, the watcher's gathering window (200 ms of
  quiet, `watch.rs` QUIET), the GetParameter, the download and unpack, the swap and the
  hook. Beside it, the same release's plain download and unpack by bootstage
  (`s3-sync --from s3://…/N.tar.zst --to DIR` once, a fresh state dir and destination,
  from spawn to exit), so the pointer path's own cost is the difference. Both also give
  bootstage's own fetch and commit times (its "swapped in" log line). S3 is bench-s3 with
  each connection capped at --conn-rate MB/s (bench-bundle.py's model of S3; 0: no cap),
  SSM and SQS are moto, all on 127.0.0.1; files on tmpfs (benchlib.scratch says why).
  After each run the destination's current generation must be the new release.

rollback: how long `bootstage rollback` takes from the command to the previous
  generation current. Two releases (each a tar of --files files, 4 KiB each) are synced
  from file:// into one destination on a disk directory (--dir, default /var/tmp: fsync
  there is real, unlike on tmpfs), so it keeps two generations. Then --runs rollbacks
  alternate between them (`rollback DEST --to GEN`, no --on-change, no notice
  configured), each timed:
  - wall: from spawning the command until it exited (process start included), and
  - swap: the command's own measure, from its start to the link renamed and the parent
    fsynced (the `ms` of its "rolled back" log line).
  After each run the destination's `version` file is read back, so a run that did not
  swap fails the benchmark. Target: a p50 of 50 ms or less.

Each prints its figures with the machine's load average (before and after) and, unless
--no-write, replaces its section of BENCHMARKS.md (release-pointer, release-rollback).

Usage: scripts/bench-release.py pointer [--runs 5] [--size 177] [--conn-rate 90] [--no-write]
       scripts/bench-release.py rollback [--runs 50] [--files 1000] [--dir /var/tmp] [--no-write]
Needs a release build of committed code: CARGO_TARGET_DIR=/work/rel-target cargo build
--release -p bootstage -p bench-s3 (benchlib finds it under CARGO_TARGET_DIR), and boto3
and moto (scripts/install-bench-deps.sh).
"""
import argparse, array, functools, importlib.util, io, json, os, re, shutil, socket, statistics, subprocess, sys, tarfile
import tempfile, threading, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import ACCESS_KEY, BENCH_S3, BIN, SECRET_KEY, BenchS3, Moto, env_for  # noqa: E402

MIB = 1 << 20
PARAMETER = "/bench/web/release"
EVENT = benchlib.ROOT / "tests" / "fixtures" / "eventbridge" / "parameter-store-change.json"


@functools.lru_cache(maxsize=None)
def bench_bundle():
    """scripts/bench-bundle.py as a module: its paced bench-s3 and its tar writer."""
    spec = importlib.util.spec_from_file_location("bench_bundle", Path(__file__).resolve().parent / "bench-bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load():
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


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


def rollback(args):
    if not BIN.exists():
        sys.exit(f"no release build at {BIN}")
    before = load()
    work = Path(tempfile.mkdtemp(prefix="bench-release.", dir=args.dir))
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BOOTSTAGE_LOG": "info",
               "BOOTSTAGE_NOTIFY_CONFIG": str(work / "no-notify.json"),
               "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", **benchlib.LOOPBACK_ONLY}
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"`bootstage rollback DEST --to GEN`, {args.runs} runs alternating between two generations of "
             f"{args.files} files (4 KiB each), on {fs} ({args.dir}); {os.cpu_count()} cores; {before} before, "
             f"{load()} after. `scripts/bench-release.py rollback --runs {args.runs} --files {args.files} "
             f"--dir {args.dir}`.", "",
             f"- wall (spawn to exit): p50 {pct(walls, 50):.1f} ms, p90 {pct(walls, 90):.1f} ms, max {max(walls):.1f} ms"]
    if swaps:
        lines.append(f"- swap (command start to link renamed and parent fsynced, its own log): p50 {pct(swaps, 50)} ms,"
                     f" p90 {pct(swaps, 90)} ms")
    lines.append(f"- target (issue 28): p50 <= 50 ms: {'met' if pct(walls, 50) <= 50 else 'NOT met'}")
    print("\n".join(lines))
    if not args.no_write:
        benchlib.write_section("release-rollback", "Releases: rollback (`scripts/bench-release.py rollback`)",
                               "\n".join(lines))


def make_release(work, mb, version):
    """An incompressible .tar.zst of `mb` MB with a `version` file: bench-bundle.py's shape."""
    add = bench_bundle().add
    tar_path, zst = work / f"{version}.tar", work / f"{version}.tar.zst"
    with tarfile.open(tar_path, "w") as tar:
        add(tar, "version", f"{version}\n".encode())
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


class Notifications:
    """A NOTIFY_SOCKET read as systemd reads it (descriptors that come with BARRIER=1
    closed), with an event for each READY=1."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.ready = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except OSError:
                return
            for level, kind, cdata in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                    for fd in fds:
                        os.close(fd)
            if b"READY=1" in data.split(b"\n"):
                self.ready.set()


def woken_at(log_text):
    """The wall-clock time (seconds since the epoch) of the last "woken by the queue" line."""
    import datetime
    found = re.findall(r"^(\S+Z) .*watch: woken by the queue", log_text, flags=re.M)
    if not found:
        return None
    stamp = datetime.datetime.strptime(found[-1][:26], "%Y-%m-%dT%H:%M:%S.%f")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def swapped_in(log_text):
    """(fetch_ms, commit_ms) of the last "swapped in a new generation" line of a log."""
    found = re.findall(r"swapped in a new generation from the archive.*", log_text)
    if not found:
        return None
    m = re.search(r"fetch_ms=(\d+) commit_ms=(\d+)", found[-1])
    return (int(m.group(1)), int(m.group(2))) if m else None


def pointer(args):
    import boto3
    if not BIN.exists() or not BENCH_S3.exists():
        sys.exit(f"no release build at {BIN.parent}: CARGO_TARGET_DIR=... cargo build --release -p bootstage -p bench-s3")
    before = load()
    rows = []
    with benchlib.scratch() as tmp:
        work = Path(tmp)
        s3srv = bench_bundle().PacedS3(work, args.conn_rate) if args.conn_rate else BenchS3(work)
        moto = Moto(work)
        watcher = None
        try:
            env = env_for(s3srv)
            for name in ("hooks", "lib"):
                (work / name).mkdir()
            env.update({
                # S3 is bench-s3 (AWS_ENDPOINT_URL); SSM and SQS are moto's.
                "AWS_ENDPOINT_URL_SSM": moto.url, "AWS_ENDPOINT_URL_SQS": moto.url, "BOOTSTAGE_LOG": "info",
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
                "BOOTSTAGE_NOTIFY_CONFIG": str(work / "no-notify.json"), "BOOTSTAGE_HOOKS_DIR": str(work / "hooks"),
                "BOOTSTAGE_LIB_DIR": str(work / "lib"),
                "BOOTSTAGE_LIFECYCLE_CONFIG": str(work / "no-lifecycle.json"),
            })
            kw = dict(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
            s3 = boto3.client("s3", endpoint_url=s3srv.url, **kw)
            ssm = boto3.client("ssm", endpoint_url=moto.url, **kw)
            sqs = boto3.client("sqs", endpoint_url=moto.url, **kw)
            s3.create_bucket(Bucket="bench")
            queue = sqs.create_queue(QueueName="bench-release")["QueueUrl"]
            event = EVENT.read_text().replace("/rotation/db-password", PARAMETER).replace("SecureString", "String")

            def publish(v):
                """Release v made and uploaded (with its CRC32, as bench-bundle.py does); its URL."""
                path = make_release(work, args.size, v)
                with open(path, "rb") as body:
                    s3.put_object(Bucket="bench", Key=f"releases/{v}.tar.zst", Body=body, ChecksumAlgorithm="CRC32")
                size = path.stat().st_size
                path.unlink()
                return f"s3://bench/releases/{v}.tar.zst", size

            url, size = publish(1)
            ssm.put_parameter(Name=PARAMETER, Value=url, Type="String", Overwrite=True)
            dest = work / "srv" / "code"
            fifo = work / "hook.fifo"
            os.mkfifo(fifo)
            user_data = work / "user-data.json"
            user_data.write_text(json.dumps({"bootstage": {
                "sync": [{"from": {"ssm": PARAMETER}, "to": str(dest)}],
                "watch": {"sqs": queue, "interval": "10m"}}}))
            notify = Notifications(work / "notify.sock")
            log = work / "watcher.log"
            watcher = subprocess.Popen(
                [str(BIN), "--state-dir", str(work / "state"), "s3-sync", "--watch", "10m", "--user-data-file",
                 str(user_data), "--fact", "instance-id=i-bench", "--sync-timeout", "10m",
                 "--on-change", f"printf '%s\\n' \"$BOOTSTAGE_CHANGED\" > {fifo}"],
                env={**env, "NOTIFY_SOCKET": str(work / "notify.sock")}, stdout=subprocess.DEVNULL,
                stderr=open(log, "w"))
            if not notify.ready.wait(300):
                sys.exit(f"the watcher was not READY: {log.read_text()[-3000:]}")
            print(f"release pointer -> serving, {args.runs} runs of a {size / 1e6:.0f} MB .tar.zst; {before}",
                  flush=True)
            for run in range(args.runs):
                v = run + 2
                url, size = publish(v)
                if v > 3:
                    s3.delete_object(Bucket="bench", Key=f"releases/{v - 2}.tar.zst")
                os.sync()
                hooked = {}

                def wait_hook():
                    fd = os.open(fifo, os.O_RDONLY)
                    hooked["changed"] = os.read(fd, 4096).decode().strip()
                    hooked["at"] = time.perf_counter()
                    os.close(fd)

                reader = threading.Thread(target=wait_hook, daemon=True)
                reader.start()
                t0, t0_wall = time.perf_counter(), time.time()
                ssm.put_parameter(Name=PARAMETER, Value=url, Type="String", Overwrite=True)
                t_put = time.perf_counter()
                sqs.send_message(QueueUrl=queue, MessageBody=event)
                t_sent = time.perf_counter()
                reader.join(600)
                if "at" not in hooked:
                    sys.exit(f"run {run + 1}: no hook within 600 s: {log.read_text()[-3000:]}")
                if hooked["changed"] != str(dest):
                    sys.exit(f"run {run + 1}: the hook was told {hooked['changed']!r}")
                if (dest / "version").read_text() != f"{v}\n":
                    sys.exit(f"run {run + 1}: the destination does not serve release {v}")
                watched = swapped_in(log.read_text())
                woken = woken_at(log.read_text())
                # Beside it: the same release, downloaded and unpacked by a plain s3-sync.
                plain_state, plain_dest = work / "plain" / "state", work / "plain" / "dest"
                os.sync()
                start = time.perf_counter()
                done = subprocess.run([str(BIN), "--state-dir", str(plain_state), "s3-sync", "--from", url, "--to",
                                       str(plain_dest), "--sync-timeout", "10m"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                plain_wall = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"plain s3-sync: exit {done.returncode}: {done.stderr[-3000:]}")
                if (plain_dest / "version").read_text() != f"{v}\n":
                    sys.exit("plain s3-sync: not the release")
                plain = swapped_in(done.stderr)
                shutil.rmtree(work / "plain")
                row = dict(total=hooked["at"] - t0, put=t_put - t0, send=t_sent - t_put, watched=watched,
                           woken=woken - t0_wall if woken else float("nan"), plain=plain_wall, plain_own=plain)
                rows.append(row)
                print(f"  run {run + 1}: PutParameter -> hook run {row['total']:.3f} s (PutParameter "
                      f"{row['put'] * 1000:.0f} ms, SendMessage {row['send'] * 1000:.0f} ms; the watcher's pass began "
                      f"at +{row['woken'] * 1000:.0f} ms, after its 200 ms gathering window; its fetch "
                      f"{watched[0]} ms + commit {watched[1]} ms); plain s3-sync of the same release, spawn to "
                      f"exit {plain_wall:.3f} s (fetch {plain[0]} ms + commit {plain[1]} ms); {load()}", flush=True)
        finally:
            if watcher:
                watcher.terminate()
                watcher.wait()
            s3srv.stop()
            moto.stop()
    p50 = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    own = lambda key, i: statistics.median(r[key][i] for r in rows)  # noqa: E731
    cap = f"each connection capped at {args.conn_rate:g} MB/s" if args.conn_rate else "no rate cap"
    lines = [
        f"A watcher (`s3-sync --watch 10m`, woken by SQS) of a release pointer in SSM; each run publishes a new "
        f"{size / 1e6:.0f} MB incompressible .tar.zst (1,000 small files and 8 MiB ones), then times from just "
        "before SSM PutParameter (the pointer moved) to the --on-change hook having run, the Parameter Store "
        "Change event sent to the queue after the put as EventBridge would. Beside it, the same release "
        "downloaded and unpacked by a one-off `s3-sync --from URL --to DIR` (fresh state, spawn to exit). "
        f"bench-s3 ({cap}) for S3, moto for SSM and SQS, all on 127.0.0.1; tmpfs; {os.cpu_count()} cores shared "
        f"by the servers and bootstage; median of {len(rows)} runs; {before} before, {load()} after. "
        f"`scripts/bench-release.py pointer --runs {args.runs} --size {args.size} --conn-rate {args.conn_rate:g}`.",
        "",
        "| path | p50 | of which, bootstage's log: fetch and unpack + commit (the swap; the watcher's also removes the generation past `keep`) |",
        "|---|---:|---:|",
        f"| pointer moved -> new release serving (PutParameter to hook run) | {p50('total'):.2f} s | "
        f"{own('watched', 0) / 1000:.2f} s + {own('watched', 1) / 1000:.2f} s |",
        f"| the same release, plain download and unpack (`s3-sync` once, spawn to exit) | {p50('plain'):.2f} s | "
        f"{own('plain_own', 0) / 1000:.2f} s + {own('plain_own', 1) / 1000:.2f} s |",
        "",
        f"The pointer path's own share: {p50('total') - p50('plain'):+.2f} s at the median. Of it: PutParameter "
        f"{p50('put') * 1000:.0f} ms and SendMessage {p50('send') * 1000:.0f} ms on moto; the watcher's pass began "
        f"(its \"woken by the queue\" line) {p50('woken') * 1000:.0f} ms after the put began (p50), of which 200 ms "
        "is its gathering window (after a message it waits for 200 ms of quiet, so that a burst of messages makes "
        "one pass: watch.rs QUIET); then it reads the pointer (GetParameter), fetches and unpacks, swaps and runs "
        "the hook. The plain run pays for its process start and AWS set-up instead. On AWS, EventBridge's delivery "
        "to SQS comes on top.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        benchlib.write_section("release-pointer", "Releases: pointer change to new release serving "
                               "(`scripts/bench-release.py pointer`)", "\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description="Release benchmarks (#28); see the module's docstring.")
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pointer", help="pointer change -> new release serving on an SQS-woken watcher")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size", type=int, default=177, help="the release's size in MB")
    p.add_argument("--conn-rate", type=float, default=90, help="bench-s3's cap per connection in MB/s (0: none)")
    p.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    r = sub.add_parser("rollback", help="`bootstage rollback` from the command to the previous generation current")
    r.add_argument("--runs", type=int, default=50)
    r.add_argument("--files", type=int, default=1000)
    r.add_argument("--dir", default="/var/tmp")
    r.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    args = ap.parse_args()
    {"pointer": pointer, "rollback": rollback}[args.what](args)


if __name__ == "__main__":
    main()
