"""Many fetchers of one dataset ID started at the same moment against one publisher: do they all complete?

Network (separate processes on 127.0.0.1, each in its own home): A publishes a small tensor (the KJV, a few
shards); with --bootstrap-node, a node D that holds nothing is started first, A bootstraps through it (so A's
announcement reaches it) and so do the fetchers (else they bootstrap through A). Then --fetchers processes start at once. Each is what a trainer with no daemon runs: the
embedded client-mode node of kogitune.client (`embedded_node()`), which resolves the ID (provider lookup,
connect, signed manifest) and fetches every shard, verified, into its own home. With --get, each fetcher is a
node daemon instead, and the timed part is `kogitune get ID` (started at once in every home).

Reported: how many completed, the wall time of each (min / median / max), and every distinct error line.

Every process gets KOGITUNE_READ_TIMEOUT=--read-timeout (default 30, the product's default; the tests use 3).

    python scripts/bench_many_fetchers.py [--fetchers 40] [--bootstrap-node] [--get] [--chapters 300]
                                          [--read-timeout 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import netnodes  # noqa: E402
from netnodes import KOGITUNE, NodeProcess  # noqa: E402

FETCHER = """
import sys, time
from kogitune.client import open_dataset_id
dataset_id, timeout = sys.argv[1], float(sys.argv[2])
tensor = open_dataset_id(dataset_id, timeout=timeout)
for index in range(len(tensor.shards)):
    tensor.remote.ensure(tensor.manifest, index)
assert tensor.verify() == []
"""


def make_tensor(root: Path, chapters: int) -> Path:
    from kogitune.corpora import write_kjv_chapters
    from kogitune.write import StoreOptions, store

    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=chapters)
    store(
        [corpus],
        "gpt2",
        root / "kjv",
        StoreOptions(block_size=64, piece_size=64 << 10, shard_size=256 << 10, workers=1),
        progress=False,
    )
    return root / "kjv"


def run_fetchers(root: Path, dataset_id: str, bootstrap: str, count: int, use_get: bool, timeout: float, env: dict):
    """Start `count` fetchers at once; return [(seconds, returncode, last stderr line)]."""
    daemons = []
    try:
        if use_get:
            daemons = [NodeProcess(root / f"f{i}", [bootstrap], env) for i in range(count)]
            commands = [([KOGITUNE, "get", dataset_id, "--quiet", "--home", str(d.home)], env) for d in daemons]
        else:
            commands = [
                (
                    [sys.executable, "-c", FETCHER, dataset_id, str(timeout)],
                    {**env, "KOGITUNE_HOME": str(root / f"f{i}"), "KOGITUNE_BOOTSTRAP": bootstrap},
                )
                for i in range(count)
            ]
        started = time.monotonic()
        procs = [
            subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for args, env in commands
        ]
        results = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=max(1.0, started + timeout + 30 - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                err += "\n(killed: no end within the timeout)"
            lines = [line for line in err.strip().splitlines() if line.strip()]
            results.append((time.monotonic() - started, proc.returncode, lines[-1] if lines else ""))
        return results
    finally:
        for daemon in daemons:
            daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetchers", type=int, default=40)
    parser.add_argument("--bootstrap-node", action="store_true", help="fetchers bootstrap through a node D, not A")
    parser.add_argument("--get", action="store_true", help="each fetcher is a daemon running `kogitune get`")
    parser.add_argument("--chapters", type=int, default=300, help="KJV chapters in the tensor (default 300)")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--read-timeout", type=float, default=30.0, help="KOGITUNE_READ_TIMEOUT of every process")
    args = parser.parse_args()
    env = {**netnodes.ENV, "KOGITUNE_READ_TIMEOUT": str(args.read_timeout)}
    with tempfile.TemporaryDirectory(prefix="kg-many-") as tmp:
        root = Path(tmp)
        tensor = make_tensor(root, args.chapters)
        nodes = []
        try:
            if args.bootstrap_node:  # up first, as a network's bootstrap node is: A's announcement reaches it
                nodes.append(NodeProcess(root / "d", env=env))
            nodes.append(NodeProcess(root / "a", [node.address for node in nodes], env))
            dataset_id = nodes[-1].cli("publish", str(tensor)).stdout.strip()
            bootstrap = nodes[0].address
            results = run_fetchers(root, dataset_id, bootstrap, args.fetchers, args.get, args.timeout, env)
        finally:
            for node in nodes:
                node.close()
    ok = [seconds for seconds, code, _ in results if code == 0]
    kind = "`kogitune get` daemons" if args.get else "embedded fetchers (trainers)"
    print(
        f"{len(ok)}/{len(results)} {kind} completed"
        f"{' (through a bootstrap node)' if args.bootstrap_node else ''}, read timeout {args.read_timeout:g} s"
    )
    if ok:
        print(f"  seconds: min {min(ok):.1f}  median {statistics.median(ok):.1f}  max {max(ok):.1f}")
    for line, n in Counter(line for _, code, line in results if code != 0).most_common():
        print(f"  {n} x {line[:300]}")


if __name__ == "__main__":
    main()
