"""What store-time perturbation costs in data quality, measured on the KJV (figures for docs/privacy.md).

    python scripts/bench_perturb.py [--steps 300]

The first 1,000 KJV chapters are stored clean and with each perturbation; the last 189 chapters, stored clean,
are held out. For each tensor: the fraction of tokens changed or dropped, the total variation distance of its
unigram and bigram distributions from the clean tensor's, and the held-out loss of a tiny GPT-2 trained on it for
the same number of steps (kogitune.tiny_model). Needs the `train` extra (torch, transformers).

To fit in a few minutes on 2 shared cores, the model's vocabulary is the ids the clean KJV uses plus one "other"
id for every id it never uses (where almost all randomized-response replacements land), and torch uses one
thread. The held-out loss is measured on clean text only, so the "other" bucket never helps it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kogitune.corpora import write_kjv_chapters
from kogitune.perturb import PerturbSpec, keep_probability
from kogitune.tensor import DataTensor
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions, store

BLOCK = 64
TRAIN_CHAPTERS = 1000


def specs(mask_id: int) -> dict[str, PerturbSpec | None]:
    return {
        "clean": None,
        "krr eps=16": PerturbSpec(epsilon=16.0),
        "krr eps=13": PerturbSpec(epsilon=13.0),
        "krr eps=11": PerturbSpec(epsilon=11.0),
        "krr eps=8": PerturbSpec(epsilon=8.0),
        "mask 10%": PerturbSpec(mask=0.1, mask_id=mask_id),
        "drop 10%": PerturbSpec(drop=0.1),
        "drop 30%": PerturbSpec(drop=0.3),
    }


def split_corpus(directory: Path) -> tuple[Path, Path]:
    everything = write_kjv_chapters(directory / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    train, held_out = directory / "train.jsonl", directory / "held_out.jsonl"
    train.write_text("".join(everything[:TRAIN_CHAPTERS]), encoding="utf-8")
    held_out.write_text("".join(everything[TRAIN_CHAPTERS:]), encoding="utf-8")
    return train, held_out


def distribution_distance(tokens: np.ndarray, clean: np.ndarray, order: int) -> float:
    """Total variation distance between the n-gram (n = `order`) frequency distributions of two token streams."""

    def frequencies(stream):
        grams = Counter(zip(*(stream[i : len(stream) - order + 1 + i].tolist() for i in range(order))))
        total = sum(grams.values())
        return {gram: count / total for gram, count in grams.items()}

    p, q = frequencies(tokens), frequencies(clean)
    return 0.5 * sum(abs(p.get(gram, 0.0) - q.get(gram, 0.0)) for gram in p.keys() | q.keys())


def compact_blocks(tokens: np.ndarray, compact: np.ndarray, limit: int | None = None):
    """The stream in the compact vocabulary, as a list of `{"input_ids": LongTensor[BLOCK]}` samples."""
    import torch

    stream = compact[tokens]
    blocks = torch.from_numpy(stream[: len(stream) // BLOCK * BLOCK].reshape(-1, BLOCK))[:limit]
    return [{"input_ids": block} for block in blocks]


def held_out_loss(model, samples) -> float:
    import torch

    model.eval()
    batches = torch.stack([s["input_ids"] for s in samples]).split(32)
    with torch.no_grad():
        return float(np.mean([model(input_ids=batch, labels=batch).loss.item() for batch in batches]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    import torch

    from kogitune.tiny_model import tiny_gpt2, train_steps

    torch.set_num_threads(1)
    tok = load_tokenizer("gpt2")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        train, held_out = split_corpus(root)
        options = StoreOptions(block_size=BLOCK * 4, workers=1)
        store([held_out], tok, root / "held_out", options, progress=False)
        held = DataTensor(root / "held_out")
        store([train], tok, root / "clean", options, progress=False)
        clean_tokens = DataTensor(root / "clean").tokens()
        unused = int(np.setdiff1d(np.arange(tok.vocab_size), clean_tokens)[0])
        used = np.union1d(np.union1d(clean_tokens, held.tokens()), [unused])
        compact = np.zeros(tok.vocab_size, dtype=np.int64)
        compact[used] = np.arange(1, len(used) + 1)
        held_samples = compact_blocks(held.tokens(), compact, limit=500)
        print(
            f"{TRAIN_CHAPTERS} KJV chapters, GPT-2 tokenizer (k = {tok.vocab_size:,}); tiny GPT-2, {args.steps} "
            f"steps of 8 x {BLOCK} tokens over {len(used) + 1:,} compact ids; held-out loss on "
            f"{len(held_samples) * BLOCK:,} clean tokens; "
            f"masks use id {unused}, which the text never uses\n"
        )
        print("| tensor | keep prob. | tokens changed | tokens dropped | unigram TV | bigram TV | held-out loss |")
        print("|---|---|---|---|---|---|---|")
        for name, spec in specs(mask_id=unused).items():
            out = root / ("clean" if spec is None else name.replace(" ", "_").replace("%", "pct"))
            if spec is not None:
                store([train], tok, out, StoreOptions(block_size=BLOCK * 4, workers=1, perturb=spec), progress=False)
            tokens = DataTensor(out).tokens()
            keep = keep_probability(spec.epsilon, tok.vocab_size) if spec and spec.epsilon is not None else 1.0
            same_length = len(tokens) == len(clean_tokens)
            changed = np.mean(tokens != clean_tokens) if same_length else float("nan")
            dropped = 1 - len(tokens) / len(clean_tokens)
            model = tiny_gpt2(len(used) + 1, block_size=BLOCK)
            train_steps(
                model, compact_blocks(tokens, compact), tok.to_hf(), str(root / "run"), steps=args.steps, batch_size=8
            )
            loss = held_out_loss(model, held_samples)
            print(
                f"| {name} | {keep:.3f} | {changed:.3f} | {dropped:.3f} | "
                f"{distribution_distance(tokens, clean_tokens, 1):.3f} | "
                f"{distribution_distance(tokens, clean_tokens, 2):.3f} | {loss:.3f} |",
                flush=True,
            )
    print(
        f"\n(per-document epsilon of k-RR is n x eps for a document of n tokens; ln k = {math.log(tok.vocab_size):.1f})"
        f"\n(total {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
