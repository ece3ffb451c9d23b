"""Benchmark the data plane (issue 16): `kogitune get` over HTTP sources against a plain download of the same files.

Data: the KJV tokens (gpt2) repeated into a tensor of about --size-mb MB (default 200: six 32 MiB shards, 1 MiB
pieces; scripts/bench_fetch.py's repeated_kjv_tensor). Every transfer moves every shard file (.tokens, .pieces,
.docs) and writes it to disk; the baselines neither hash nor fsync, Kogitune does both.

Baselines, each one process downloading every file one after the other from ONE `python -m http.server` process
(tests/mirrors.py's stdlib_http_server) serving the tensor directory:
  curl     one `curl` process, all files in one invocation (one connection, reused); absent curl, skipped;
  httpx    one sync httpx.Client streaming each file to disk (scripts/bench_fetch.py's plain_download).

Kogitune, --repeat times interleaved with the baselines, each run in a fresh node home:
  get 3 mirrors  a `kogitune node start` process (no bootstrap; started untimed), then over its control socket as
                 `kogitune get ID --mirror URL1 --mirror URL2 --mirror URL3` does: "open" (the manifest from the
                 mirrors, checked against the ID) and "get" (every shard from the 3 mirrors at once, each piece
                 hashed against the manifest before it is written, .pieces/.docs checked, fsync + rename).
                 The mirrors are 3 tests/mirror_server.py processes (Range requests; `python -m http.server` has
                 none) serving the same directory. Reported: fetch (the "get" op: transfer + verify), get
                 (open + fetch), and the node's CPU seconds.
  get 3 peers    with --peers (after the data port landed): 3 `kogitune node start` processes that hold the
                 dataset (one publishes it, two replicate it) and serve it on their data ports; a fresh node
                 bootstrapped to them times "open" + "get" by ID alone.

One shard over long paths (--conn-rate MiB/s, default 32; 0 skips): 1 mirror whose every connection is limited to
that rate (a token bucket per connection, as one TCP stream is bounded by its window over its round trip), and
shard 0 alone, as a trainer waits for it: httpx (one connection) against a fresh node's control ops "open" (untimed)
and "shard" 0 (timed), which may open several connections to the mirror (Source.connections).

Cold first batch (unless --skip-cold-start): a fresh Python process with an empty KOGITUNE_HOME times
`DatasetRecipe([mirror URL]).get_train_dataset(--block-size)` and the first DataLoader batch (imports excluded),
and with --peers the same by dataset ID alone (KOGITUNE_BOOTSTRAP = the 3 peers: DHT lookup, the signed manifest
over libp2p, the shard over their data ports), against httpx downloading manifest.json and one shard's files from
the plain server. Imports (torch, kogitune, trio, the fetch service's modules and py-libp2p) are excluded, as issue
16 says (every module the cold start imports, listed in TRAINER): <= 3x. The training process's CPU seconds from
open to batch are reported beside. With --compare-python (another checkout's venv interpreter, e.g. main's), the
cold start by ID runs with that code too, interleaved: before and after in one run.

Ratios are throughputs (baseline seconds / Kogitune seconds), best to best and median to median, taken in one run.
CPU (load-robust where seconds are not): "CPU s" is the downloading process's (curl, the bench's own for httpx, the
fetching node's), and a last table gives CPU seconds per GiB moved of each side, the downloader and the server(s):
curl and the `python -m http.server` process, the fetching node and the 3 serving nodes (their sum, and each).

    python scripts/bench_dataplane.py [--size-mb 200] [--repeat 3] [--peers] [--conn-rate 32] [--skip-cold-start]
                                      [--compare-python /work/main/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fetch import (  # noqa: E402
    MIRROR_SERVER,
    MiB,
    load_note,
    mirrors,
    plain_download,
    repeated_kjv_tensor,
    shard_files,
)
from bench_network import NODE_ENV, NodeProcess, close_all, process_cpu, ratio_line, row  # noqa: E402

sys.path.insert(0, str(MIRROR_SERVER.parent))
from mirrors import server_processes, stdlib_http_server  # noqa: E402

CALL_TIMEOUT = 300.0
# A training process (bench_network.py's), with every module the cold start imports lazily imported before the
# clock: the fetch service's (trio, node/, the embedded node's daemon and service modules and the py-libp2p ones it
# imports when it starts: 0.6-0.7 s here), the client's, the dataset's and numpy.random (the epoch order's: 0.02 s).
TRAINER = r"""
import json, os, sys, time
started = time.perf_counter()
import numpy.random, torch
import kogitune.client, kogitune.dataset, kogitune.mixing
import kogitune.node.daemon, kogitune.node.embedded, kogitune.node.service, kogitune.node.swarm
import libp2p, libp2p.kad_dht.kad_dht, libp2p.tools.anyio_service, multiaddr
from kogitune.recipe import DatasetRecipe
imported, cpu = time.perf_counter(), time.process_time()
dataset = DatasetRecipe([sys.argv[1]]).get_train_dataset(int(sys.argv[2]))
opened = time.perf_counter()
batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
done = time.perf_counter()
assert tuple(batch["input_ids"].shape) == (8, int(sys.argv[2]))
times = {"import": imported - started, "open": opened - imported, "batch": done - opened}
print(json.dumps({**times, "cpu": time.process_time() - cpu}), flush=True)
os._exit(0)  # background prefetches die with the process; the bench removes the home
"""
# tests/mirror_server.py with every connection limited to RATE MiB/s on its own (one TCP stream over a long path).
PER_CONNECTION_SERVER = r"""
import sys, time
from functools import partial
sys.path.insert(0, sys.argv[1])
import mirror_server

RATE, CHUNK = float(sys.argv[3]) * 2**20, 64 << 10


class Throttled:
    def __init__(self, raw):
        self.raw, self.next_free = raw, time.monotonic()

    def write(self, data):
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            part = view[at:at + CHUNK]
            self.next_free = max(time.monotonic(), self.next_free) + len(part) / RATE
            self.raw.write(part)
            time.sleep(max(0.0, self.next_free - time.monotonic()))
        return len(view)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class Handler(mirror_server.MirrorHandler):
    def setup(self):
        super().setup()
        self.wfile = Throttled(self.wfile)


server = mirror_server.MirrorServer(("127.0.0.1", 0), partial(Handler, directory=sys.argv[2]))
server.daemon_threads = True
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
"""


def curl_download(url: str, paths: list[str], directory: Path) -> float:
    """One curl process fetching every file over one connection, to disk; its CPU seconds."""
    command = ["curl", "--silent", "--show-error", "--fail", "--create-dirs"]
    for path in paths:
        command += ["-o", str(directory / path), f"{url}/{path}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, timeout=CALL_TIMEOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def http_server_pid() -> int:
    """The pid of this process's `python -m http.server` child (tests/mirrors.py's stdlib_http_server), from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and b"http.server" in command and b"mirror_server" not in command:
            return int(stat.parent.name)
    raise RuntimeError("no python -m http.server child process")


def per_gib_table(per_gib: dict[str, list[float]]) -> None:
    """CPU seconds per GiB moved, median of the runs, of each side of each transfer."""
    print("\nCPU s per GiB moved (median of the runs; load-robust, unlike seconds):")
    for name, values in per_gib.items():
        print(f"  {name:<52}{statistics.median(values):>6.2f}")


def node_get(
    work: Path, name: str, dataset_id: str, mirror_urls: list[str], bootstrap: list[str] = (), serving: list = ()
) -> dict:
    """A fresh node: (open s, fetch s, node CPU s during the fetch, the CPU s of each `serving` process (pids)
    during the fetch, sources) of getting `dataset_id`."""
    node = NodeProcess(work / name, bootstrap)
    try:
        node.ready()
        started = time.perf_counter()
        node.call("open", CALL_TIMEOUT, id=dataset_id, mirrors=mirror_urls)
        opened, cpu = time.perf_counter(), process_cpu(node.proc.pid)
        served = [process_cpu(pid) for pid in serving]
        reply = node.call("get", CALL_TIMEOUT, id=dataset_id, mirrors=mirror_urls)
        done = time.perf_counter()
        return {
            "open": opened - started,
            "fetch": done - opened,
            "cpu": process_cpu(node.proc.pid) - cpu,
            "serving_cpu": [process_cpu(pid) - before for pid, before in zip(serving, served)],
            "sources": reply.get("sources", ""),
        }
    finally:
        close_all([node])
        shutil.rmtree(node.home, ignore_errors=True)


def node_shard(work: Path, name: str, dataset_id: str, mirror_urls: list[str]) -> float:
    """A fresh node: seconds of fetching shard 0 alone (after an untimed open)."""
    node = NodeProcess(work / name)
    try:
        node.ready()
        node.call("open", CALL_TIMEOUT, id=dataset_id, mirrors=mirror_urls)
        started = time.perf_counter()
        node.call("shard", CALL_TIMEOUT, id=dataset_id, index=0, mirrors=mirror_urls)
        return time.perf_counter() - started
    finally:
        close_all([node])
        shutil.rmtree(node.home, ignore_errors=True)


def long_path_section(args, work: Path, served, dataset_id: str) -> None:
    first = served.shards[0]
    one_shard = [first.tokens_path, first.pieces_path, first.docs_path]
    mib = sum((served.path / p).stat().st_size for p in one_shard) / MiB
    command = [sys.executable, "-c", PER_CONNECTION_SERVER, str(MIRROR_SERVER.parent), str(served.path)]
    times: dict[str, list[float]] = {"httpx, 1 connection": [], "kogitune shard 0": []}
    with server_processes([command + [str(args.conn_rate)]], quiet=True) as urls:
        for run in range(args.repeat):
            started = time.perf_counter()
            plain_download(urls[0], one_shard, work / "plain")
            times["httpx, 1 connection"].append(time.perf_counter() - started)
            shutil.rmtree(work / "plain")
            times["kogitune shard 0"].append(node_shard(work, f"shard{run}", dataset_id, urls))
    print(f"\nOne shard ({mib:.1f} MiB) from 1 mirror limited to {args.conn_rate:g} MiB/s per connection:")
    print(f"{'':<36}{'best s':>8}{'median s':>10}{'spread':>8}{'MiB/s':>8}{'median':>10}")
    for name, seconds in times.items():
        print(row(name, seconds, mib))
    print(ratio_line("kogitune shard 0 vs httpx", times["httpx, 1 connection"], times["kogitune shard 0"]))


def cold_first_batch(
    entry: str, home: Path, block_size: int, bootstrap: list[str] | None = None, python: str = sys.executable
) -> dict:
    """A fresh training process (`python`, and the kogitune it imports) with an empty home: import, open and
    first-batch seconds, and its CPU seconds from open to batch, for recipe [entry] (with `bootstrap`, the peers its
    embedded node starts from: a dataset ID is then looked up on their DHT)."""
    env = {**NODE_ENV, "KOGITUNE_HOME": str(home)}
    if bootstrap:
        env["KOGITUNE_BOOTSTRAP"] = ",".join(bootstrap)
    home.mkdir(parents=True)
    result = subprocess.run(
        [python, "-c", TRAINER, entry, str(block_size)], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode:
        raise RuntimeError(f"training process failed: {result.stderr[-2000:]}")
    import json

    return json.loads(result.stdout.strip().splitlines()[-1])


def publish_peers(work: Path, served: Path, dataset_id: str) -> list[NodeProcess]:
    """Three nodes holding the dataset: A publishes it, B and C (bootstrapped to A) get it. Their data ports serve
    it from then on."""
    a = NodeProcess(work / "peer-a").ready()
    nodes = [a]
    try:
        published = a.call("publish", CALL_TIMEOUT, path=str(served))["id"]
        if published != dataset_id:
            raise RuntimeError(f"A published {published}, the mirrors serve {dataset_id}")
        for name in ("peer-b", "peer-c"):
            node = NodeProcess(work / name, [a.address])
            nodes.append(node)
            node.ready()
            node.call("get", CALL_TIMEOUT, id=dataset_id)
    except BaseException:
        close_all(nodes)
        raise
    return nodes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200, help="tensor size in MB (default: 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default: 3)")
    parser.add_argument("--block-size", type=int, default=512, help="sample length of the cold start (default: 512)")
    parser.add_argument("--peers", action="store_true", help="also get from 3 node processes' data ports")
    parser.add_argument(
        "--conn-rate",
        type=float,
        default=32,
        help="MiB/s per connection of the long-path mirror; 0 skips (default: 32)",
    )
    parser.add_argument("--skip-cold-start", action="store_true", help="skip the cold first batch")
    parser.add_argument(
        "--compare-python",
        metavar="PYTHON",
        help="with --peers, also time the cold first batch by ID with this interpreter (another checkout's venv, "
        "e.g. main's: before and after in one interleaved run)",
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.size_mb <= 0 or args.block_size < 1:
        parser.error("--repeat, --size-mb and --block-size must be positive")
    return args


def main() -> None:
    args = parse_args()
    print(f"bench_dataplane: {load_note()} (start)")
    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-dataplane-"))
    peers: list[NodeProcess] = []
    try:
        served = repeated_kjv_tensor(work, work / "served", args.size_mb)
        dataset_id = served.manifest.dataset_id
        paths = shard_files(served)
        total = sum((served.path / p).stat().st_size for p in paths)
        mib = total / MiB
        print(f"tensor {dataset_id}: {len(served.shards)} shards, {mib:.1f} MiB of shard files")
        if args.peers:
            peers = publish_peers(work, served.path, dataset_id)
        times: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        per_gib: dict[str, list[float]] = {}
        gib = total / 2**30
        use_curl = shutil.which("curl") is not None
        with stdlib_http_server(served.path) as plain_url, mirrors(served.path, 3) as mirror_urls:
            plain_pid = http_server_pid()
            plain_download(plain_url, paths[:3], work / "warmup")  # page cache, first connection
            shutil.rmtree(work / "warmup")
            for run in range(args.repeat):
                target = work / "plain"
                for variant in ["curl"] * use_curl + ["httpx"]:
                    started, cpu_started, server_cpu = time.perf_counter(), time.process_time(), process_cpu(plain_pid)
                    if variant == "curl":
                        used = curl_download(plain_url, paths, target)
                    else:
                        plain_download(plain_url, paths, target)
                        used = time.process_time() - cpu_started
                    times.setdefault(variant, []).append(time.perf_counter() - started)
                    cpu.setdefault(variant, []).append(used)
                    per_gib.setdefault(f"{variant} (downloader)", []).append(used / gib)
                    per_gib.setdefault(f"{variant}: python -m http.server", []).append(
                        (process_cpu(plain_pid) - server_cpu) / gib
                    )
                    shutil.rmtree(target)
                got = node_get(work, f"get{run}", dataset_id, mirror_urls)
                times.setdefault("kogitune fetch, 3 mirrors", []).append(got["fetch"])
                times.setdefault("kogitune open+get, 3 mirrors", []).append(got["open"] + got["fetch"])
                cpu.setdefault("kogitune fetch, 3 mirrors", []).append(got["cpu"])
                if peers:
                    bootstrap = [p.address for p in peers]
                    serving = [p.proc.pid for p in peers]
                    by_peers = node_get(work, f"peers{run}", dataset_id, [], bootstrap, serving)
                    times.setdefault("kogitune fetch, 3 peers", []).append(by_peers["fetch"])
                    times.setdefault("kogitune open+get, 3 peers", []).append(by_peers["open"] + by_peers["fetch"])
                    cpu.setdefault("kogitune fetch, 3 peers", []).append(by_peers["cpu"])
                    per_gib.setdefault("get from 3 peers: the fetching node", []).append(by_peers["cpu"] / gib)
                    per_gib.setdefault("get from 3 peers: the 3 serving nodes, in all", []).append(
                        sum(by_peers["serving_cpu"]) / gib
                    )
                    for which, used in zip("ABC", by_peers["serving_cpu"]):
                        per_gib.setdefault(f"get from 3 peers: serving node {which}", []).append(used / gib)
                    print(f"  peers' sources: {by_peers['sources']}")
                print(f"  mirrors' sources: {got['sources']}")
                last = ", ".join(f"{v} {t[-1]:.2f} s" for v, t in times.items())
                print(f"  run {run + 1}/{args.repeat} ({load_note()}): {last}", flush=True)

            print(f"\nWhole dataset ({mib:.1f} MiB), {args.repeat} runs:")
            print(f"{'':<36}{'best s':>8}{'median s':>10}{'spread':>8}{'MiB/s':>8}{'median':>10}{'CPU s':>8}")
            for name, seconds in times.items():
                print(row(name, seconds, mib, cpu.get(name)))
            baseline = "curl" if use_curl else "httpx"
            for candidate in [v for v in times if v.startswith("kogitune")]:
                print(ratio_line(f"{candidate} vs {baseline}", times[baseline], times[candidate]) + " (goal >= 0.7x)")
            if use_curl:
                print(
                    ratio_line("kogitune fetch, 3 mirrors vs httpx", times["httpx"], times["kogitune fetch, 3 mirrors"])
                )
            per_gib_table(per_gib)

            if not args.skip_cold_start:
                from kogitune.layout import MANIFEST_FILE

                first = served.shards[0]
                one_shard = [MANIFEST_FILE, first.tokens_path, first.pieces_path, first.docs_path]
                cold: dict[str, list[float]] = {
                    "http: manifest + 1 shard": [],
                    "kogitune first batch (mirror)": [],
                    "  open (node, manifest)": [],
                    "  batch (shard fetch, verify)": [],
                }
                compare = bool(peers and args.compare_python)
                bootstrap = [p.address for p in peers]
                cold_cpu: dict[str, list[float]] = {}
                for _ in range(args.repeat):
                    target = work / "cold"
                    started = time.perf_counter()
                    plain_download(plain_url, one_shard, target)
                    cold["http: manifest + 1 shard"].append(time.perf_counter() - started)
                    shutil.rmtree(target)
                    result = cold_first_batch(mirror_urls[0], target, args.block_size)
                    shutil.rmtree(target)
                    cold_cpu.setdefault("kogitune first batch (mirror)", []).append(result["cpu"])
                    cold["kogitune first batch (mirror)"].append(result["open"] + result["batch"])
                    cold["  open (node, manifest)"].append(result["open"])
                    cold["  batch (shard fetch, verify)"].append(result["batch"])
                    for label, python in [("", sys.executable), (" compared", args.compare_python)][: 1 + compare]:
                        result = cold_first_batch(dataset_id, target, args.block_size, bootstrap, python)
                        shutil.rmtree(target)
                        cold.setdefault(f"kogitune by ID (3 peers){label}", []).append(result["open"] + result["batch"])
                        cold.setdefault(f"  open (lookup, manifest){label}", []).append(result["open"])
                        cold.setdefault(f"  batch (shard, data ports){label}", []).append(result["batch"])
                        cold_cpu.setdefault(f"kogitune by ID (3 peers){label}", []).append(result["cpu"])
                print(f"\nCold first batch (empty home, imports excluded; block {args.block_size}, batch 8):")
                print(f"{'':<36}{'best s':>8}{'median s':>10}{'spread':>8}{'':>18}{'CPU s':>8}")
                for name, seconds in cold.items():
                    print(row(name, seconds, None, cold_cpu.get(name)))
                fb, http = cold["kogitune first batch (mirror)"], cold["http: manifest + 1 shard"]
                print(
                    f"first batch / http one shard: {min(fb) / min(http):.1f}x best to best, "
                    f"{statistics.median(fb) / statistics.median(http):.1f}x median to median (goal <= 3x)"
                )
                for label in [""] * bool(peers) + [" compared"] * compare:
                    fb = cold[f"kogitune by ID (3 peers){label}"]
                    print(
                        f"first batch by ID{label} / http one shard: {min(fb) / min(http):.1f}x best to best, "
                        f"{statistics.median(fb) / statistics.median(http):.1f}x median to median (goal <= 3x)"
                    )
        if args.conn_rate:
            long_path_section(args, work, served, dataset_id)
        print(f"bench_dataplane: {load_note()} (end)")
    finally:
        close_all(peers)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
