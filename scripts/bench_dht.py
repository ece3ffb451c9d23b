"""Benchmark provider lookups in a DHT of --nodes Kogitune node processes on 127.0.0.1.

Network: --nodes processes of `python -m kogitune.cli node start` (server mode: DHT server, data server), started in
waves so that every bootstrap address exists when a node dials it:
  tree (default)  node 0; then nodes 1-4 bootstrapped to node 0; then the rest, each bootstrapped to one of 1-4;
  star            node 0; then all others bootstrapped to node 0;
  chain           node i bootstrapped to node i-1, one after the other (slow: one start at a time).
--datasets tiny tensors (one 64-token-block shard each, KJV tokens, distinct IDs) are published on random nodes
(seeded) and each replicated with the control op "get" on one other random node: every dataset has 2 providers.

Measured, from a separate client process (this script in --client mode), --lookups times, datasets in turn:
  kogitune lookup   a fresh client-mode kogitune.node.daemon.Node (what a training process embeds: DHT client,
                    no data server), bootstrapped to one random node that is not a provider, is started (untimed);
                    then `await node.find_providers(ID)` is timed: the product's lookup, which asks the connected
                    peers directly while py-libp2p's Kademlia lookup runs, and cuts the latter short once a
                    neighbour named any provider.
  kademlia lookup   the same, timing `await node.dht.find_providers(digest)` alone (py-libp2p 0.8.1's iterative
                    GET_PROVIDERS lookup, which runs until it has 20 providers or no closer peers).
  (kinds alternate, each on its own fresh node: a node that found providers keeps them as local records.)
  baseline          on the same fresh node, after connecting (untimed) to a known provider: a `have` request
                    (kogitune.node.peers.fetch_have: new stream, protocol negotiation, request, response), 3 each.
A lookup counts as right when the set of providers it returns is exactly the 2 expected peers.
From the daemons (control socket, as `kogitune get` starts): "open" on 3 non-provider nodes per dataset: lookup +
connect to the providers + signed manifest; these nodes are DHT servers and may hold the record themselves.
Record spread: the client asks every node directly (one GET_PROVIDERS each) which providers it stores per dataset.

Routing tables: afterwards the client asks every node for its closest peers to one key (one FIND_NODE each) and
counts how many of the returned peers are the (by then stopped) client-mode lookup nodes.
Each lookup node's shutdown (about 1 s inside py-libp2p's host.close) overlaps the next lookup, untimed.

Latencies: p50, p95, max over the lookups; the ratio p50(lookup) / p50(have) is the lookup's cost in round trips
of an established connection. Spread: p50 of the first and second half of the lookups. Load averages are printed.

    python scripts/bench_dht.py [--nodes 20] [--datasets 5] [--lookups 40] [--topology tree] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fetch import load_note  # noqa: E402
from bench_network import NODE_ENV, NodeProcess, close_all, start_nodes  # noqa: E402

LOOKUP_BUDGET = 40.0
CLIENT_TIMEOUT = 200.0
HAVE_REPEATS = 3


# ---- the client process -------------------------------------------------------------------------------------------


def client(plan_path: str) -> None:
    import trio

    plan = json.loads(Path(plan_path).read_text())

    async def fresh_node(home: Path, bootstrap: str):
        from kogitune.node.daemon import Node, NodeConfig

        config = NodeConfig(
            home=home, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[bootstrap], server=False, read_timeout=10
        )
        return Node(config)

    async def one_lookup(index: int, item: dict, teardown) -> dict:
        """Measure on a fresh node; its shutdown (~1 s in host.close) is left to run in `teardown`."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        from kogitune.node.peers import fetch_have
        from kogitune.protocol.ids import provider_key

        node = await fresh_node(Path(plan["work"]) / f"client{index}", item["bootstrap"])
        result = {
            "kind": item["kind"],
            "dataset": item["dataset"],
            "found": [],
            "seconds": None,
            "have": [],
            "error": "",
        }
        begun = trio.current_time()
        await teardown.start(node.run)
        result["start"] = trio.current_time() - begun
        result["peer"] = node.peer_id
        try:
            started = trio.current_time()
            with trio.move_on_after(LOOKUP_BUDGET):
                if item["kind"] == "kogitune":
                    infos = await node.find_providers(item["id"])
                else:
                    infos = await node.dht.provider_store.find_providers(provider_key(item["id"]))
                result["seconds"] = trio.current_time() - started
                result["found"] = sorted({str(i.peer_id) for i in infos})
            provider = item["providers"][0]
            await node.connect(info_from_p2p_addr(Multiaddr(plan["addresses"][provider])))
            for _ in range(HAVE_REPEATS):
                started = trio.current_time()
                with trio.fail_after(10):
                    have = await fetch_have(
                        node.host,
                        info_from_p2p_addr(Multiaddr(plan["addresses"][provider])).peer_id,
                        item["id"],
                        item["shards"],
                        10,
                    )
                result["have"].append(trio.current_time() - started)
                assert all(have), have
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            node.stop()
        result["total"] = trio.current_time() - begun
        return result

    async def record_spread() -> dict:
        """Which providers each node stores for each dataset (one direct GET_PROVIDERS per node and dataset)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        from kogitune.protocol.ids import provider_key

        node = await fresh_node(Path(plan["work"]) / "client-spread", next(iter(plan["addresses"].values())))
        spread: dict = {d["id"]: {} for d in plan["datasets"]}
        closest: dict = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:

                async def ask(peer: str, address: str) -> None:
                    info = info_from_p2p_addr(Multiaddr(address))
                    try:
                        await node.connect(info)
                        for dataset in plan["datasets"]:
                            with trio.fail_after(10):
                                providers, _ = await node.dht.provider_store._get_providers_from_peer_with_closers(
                                    info.peer_id, provider_key(dataset["id"])
                                )
                            spread[dataset["id"]][peer] = sorted({str(p.peer_id) for p in providers})
                        with trio.fail_after(10):  # what its routing table holds near one key (FIND_NODE)
                            closest[peer] = [
                                str(p)
                                for p in await node.dht.peer_routing._query_peer_for_closest(
                                    info.peer_id, provider_key(plan["datasets"][0]["id"])
                                )
                            ]
                    except Exception as exc:
                        for dataset in plan["datasets"]:
                            spread[dataset["id"]].setdefault(peer, f"error: {type(exc).__name__}")

                async with trio.open_nursery() as asking:
                    for peer, address in plan["addresses"].items():
                        asking.start_soon(ask, peer, address)
            finally:
                node.stop()
        return {"spread": spread, "closest": closest}

    async def main() -> None:
        with trio.fail_after(CLIENT_TIMEOUT):
            async with trio.open_nursery() as teardown:
                for index, item in enumerate(plan["lookups"]):
                    print(json.dumps(await one_lookup(index, item, teardown)), flush=True)
            print(json.dumps(await record_spread()), flush=True)

    import logging

    logging.getLogger("kogitune").addHandler(logging.NullHandler())
    logging.getLogger("kogitune").propagate = False
    trio.run(main)


# ---- the benchmark ------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20, help="node processes (default: 20)")
    parser.add_argument("--datasets", type=int, default=5, help="datasets published (default: 5)")
    parser.add_argument("--lookups", type=int, default=40, help="timed lookups in all, both kinds (default: 40)")
    parser.add_argument(
        "--topology", choices=["tree", "star", "chain"], default="tree", help="how nodes bootstrap (default: tree)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for placement (default: 0)")
    parser.add_argument("--client", metavar="PLAN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nodes < 4 or args.datasets < 1 or args.lookups < 2:
        parser.error("need --nodes >= 4, --datasets >= 1, --lookups >= 2")
    return args


def waves(count: int, topology: str) -> list[list[tuple[int, int | None]]]:
    """Start waves: lists of (node index, index of the node it bootstraps to)."""
    if topology == "chain":
        return [[(0, None)]] + [[(i, i - 1)] for i in range(1, count)]
    if topology == "star":
        return [[(0, None)], [(i, 0) for i in range(1, count)]]
    hubs = list(range(1, min(5, count)))
    rest = list(range(len(hubs) + 1, count))
    return [[(0, None)], [(i, 0) for i in hubs], [(i, hubs[k % len(hubs)]) for k, i in enumerate(rest)]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def stats_row(name: str, values: list[float], baseline: float | None) -> str:
    if not values:
        return f"{name:<40}{'(none)':>8}"
    ms = [v * 1000 for v in values]
    p50 = statistics.median(ms)
    ratio = f"{p50 / (baseline * 1000):>9.1f}x" if baseline else ""
    return f"{name:<40}{len(ms):>4}{p50:>9.1f}{percentile(ms, 0.95):>9.1f}{max(ms):>9.1f}{ratio}"


def main() -> None:
    args = parse_args()
    if args.client:
        return client(args.client)

    from kogitune.corpora import write_kjv_chapters
    from kogitune.tensor import DataTensor
    from kogitune.write import StoreOptions, store

    print(f"bench_dht: {load_note()} (start)", flush=True)
    bench_started = time.perf_counter()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kogitune-bench-dht-"))
    nodes: list[NodeProcess] = []
    notes: list[str] = []
    try:
        chapters = write_kjv_chapters(work / "kjv.jsonl", limit=2 * args.datasets).read_text().splitlines()
        tensors = []
        for i in range(args.datasets):  # two different chapters each: distinct dataset IDs
            corpus = work / f"part{i}.jsonl"
            corpus.write_text("\n".join(chapters[2 * i : 2 * i + 2]) + "\n")
            store([corpus], "gpt2", work / f"data{i}", StoreOptions(workers=1, block_size=64), progress=False)
            tensors.append(DataTensor(work / f"data{i}"))

        started = time.perf_counter()
        by_index: dict[int, NodeProcess] = {}
        wave_times = []
        for wave in waves(args.nodes, args.topology):
            wave_started = time.perf_counter()
            homes = [work / f"node{i:02d}" for i, _ in wave]
            boots = [[by_index[b].address] if b is not None else [] for _, b in wave]
            for (i, _), node in zip(wave, start_nodes(homes, boots, nodes)):
                by_index[i] = node
            wave_times.append(f"{len(wave)} in {time.perf_counter() - wave_started:.1f} s")
        servers = [by_index[i] for i in range(args.nodes)]
        print(
            f"{args.nodes} nodes ({args.topology}) up in {time.perf_counter() - started:.1f} s "
            f"(waves: {', '.join(wave_times) if len(wave_times) <= 4 else f'{len(wave_times)} of 1'})",
            flush=True,
        )

        started = time.perf_counter()
        datasets = []
        for tensor in tensors:
            publisher, replica = rng.sample(servers, 2)
            dataset_id = publisher.call("publish", path=str(tensor.path))["id"]
            replica.call("get", id=dataset_id)
            datasets.append(
                {"id": dataset_id, "providers": [publisher.peer_id, replica.peer_id], "shards": len(tensor.shards)}
            )
        print(
            f"{args.datasets} datasets published and replicated (2 providers each) in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        connected = [len(n.call("status", timeout=30)["connected_peers"]) for n in servers]
        print(
            f"connected peers per node: min {min(connected)}, median {statistics.median(connected):g}, "
            f"max {max(connected)}",
            flush=True,
        )

        addresses = {n.peer_id: n.address for n in servers}
        lookups = []
        for j in range(args.lookups):
            dataset = datasets[(j // 2) % len(datasets)]
            others = [n for n in servers if n.peer_id not in dataset["providers"]]
            lookups.append(
                {
                    "kind": "kogitune" if j % 2 == 0 else "kademlia",
                    "dataset": (j // 2) % len(datasets),
                    "id": dataset["id"],
                    "providers": dataset["providers"],
                    "shards": dataset["shards"],
                    "bootstrap": rng.choice(others).address,
                }
            )
        plan = work / "plan.json"
        plan.write_text(
            json.dumps({"work": str(work), "addresses": addresses, "datasets": datasets, "lookups": lookups})
        )
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, __file__, "--client", str(plan)],
            capture_output=True,
            text=True,
            env=NODE_ENV,
            timeout=CLIENT_TIMEOUT + 30,
        )
        if result.returncode:
            raise RuntimeError(f"lookup client failed: {result.stderr[-3000:]}")
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        last = lines.pop()
        spread, closest = last["spread"], last["closest"]
        print(f"{len(lines)} lookups done in {time.perf_counter() - started:.1f} s ({load_note()})", flush=True)

        opens = []
        for dataset in datasets:
            others = [n for n in servers if n.peer_id not in dataset["providers"]]
            for node in rng.sample(others, min(3, len(others))):
                t = time.perf_counter()
                try:
                    node.call("open", timeout=60, id=dataset["id"])
                    opens.append(time.perf_counter() - t)
                except Exception as exc:
                    notes.append(f"daemon open on {node.home.name} failed: {str(exc)[:200]}")

        have = [t for r in lines for t in r["have"]]
        have_p50 = statistics.median(have) if have else None
        print(
            f"\nProvider lookups, {args.nodes} nodes ({args.topology}), {args.datasets} datasets x 2 providers "
            "(milliseconds):"
        )
        print(f"{'':<40}{'n':>4}{'p50':>9}{'p95':>9}{'max':>9}{'p50/have':>10}")
        for kind, label in (
            ("kogitune", "kogitune lookup (Node.find_providers)"),
            ("kademlia", "kademlia lookup (dht.find_providers)"),
        ):
            mine = [r for r in lines if r["kind"] == kind]
            times = [r["seconds"] for r in mine if r["seconds"] is not None]
            print(stats_row(label, times, have_p50))
            halves = [times[: len(times) // 2], times[len(times) // 2 :]]
            if all(halves):
                a, b = (statistics.median(h) * 1000 for h in halves)
                print(
                    f"{'  p50 first / second half':<40}{'':>4}{a:>9.1f}{b:>9.1f}   spread {max(a, b) / min(a, b) - 1:.0%}"
                )
            exact = sum(1 for r in mine if set(r["found"]) == set(datasets[r["dataset"]]["providers"]))
            some = sum(1 for r in mine if set(r["found"]) & set(datasets[r["dataset"]]["providers"]))
            timeouts = sum(1 for r in mine if r["seconds"] is None)
            print(
                f"{'  found exactly the 2 providers':<40}{exact:>4} of {len(mine)}; at least one: {some}; "
                f"over {LOOKUP_BUDGET:.0f} s: {timeouts}"
            )
        print(stats_row("daemon open (lookup+connect+manifest)", opens, have_p50))
        print(stats_row("baseline: have request, open connection", have, None))
        errors = [r["error"] for r in lines if r["error"]]
        if errors:
            print(f"client errors ({len(errors)}): " + " | ".join(sorted(set(errors))[:5]))

        holders = []
        for dataset in datasets:
            held = [p for p, found in spread[dataset["id"]].items() if isinstance(found, list) and found]
            complete = [p for p in held if set(spread[dataset["id"]][p]) >= set(dataset["providers"])]
            holders.append((len(held), len(complete)))
        print(
            f"record spread: nodes storing a provider record of each dataset: {[h for h, _ in holders]} of "
            f"{args.nodes}; storing both providers: {[c for _, c in holders]}"
        )
        clients = {r["peer"] for r in lines if r.get("peer")}
        stale = [sum(1 for p in found if p in clients) / len(found) for found in closest.values() if found]
        if stale:
            print(
                f"routing tables after the lookups: of the peers a node returns to FIND_NODE, median "
                f"{statistics.median(stale):.0%} (max {max(stale):.0%}) are the {len(clients)} client-mode lookup "
                "nodes, all stopped by then (py-libp2p 0.8.1 adds any peer that queries; node/host.py keeps "
                "clients out)"
            )
        for note in notes:
            print(f"note: {note}")
        print(f"bench_dht: {load_note()} (end); {time.perf_counter() - bench_started:.0f} s in all")
    finally:
        close_all(nodes)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
