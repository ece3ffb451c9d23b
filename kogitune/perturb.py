"""Store-time perturbation of token ids: k-ary randomized response, masking and dropping (docs/privacy.md).

`kogitune store --perturb "krr=2.0,seed=7"` runs a `Perturber` over each batch of tokenized documents just before
they are written. Only a document's own tokens are perturbed; the EOS that store appends after each document
stays, so document boundaries survive. One numpy Generator, seeded from the spec, draws in input order in the
main process, so the output depends on the input and the seed only, never on the number of workers.

Mechanisms run in this order on each token: randomized response (eps-local differential privacy per token), then
masking, then dropping. Masking and dropping use no information about the token, so after randomized response
they are post-processing and keep its guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import PerturbError

SPEC_HELP = (
    "comma-separated key=value: krr=EPSILON (k-ary randomized response over the vocabulary), "
    "mask=RATE and mask_id=ID (replace tokens with ID), drop=RATE (remove tokens), seed=N (default 0); "
    "e.g. 'krr=4,seed=7' or 'drop=0.1,mask=0.1,mask_id=0'"
)


@dataclass(frozen=True)
class PerturbSpec:
    """What to do to each token. Rates are probabilities per token; epsilon is per token, not per document."""

    epsilon: float | None = None
    mask: float = 0.0
    mask_id: int | None = None
    drop: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> PerturbSpec:
        """Read 'krr=2.0,mask=0.1,mask_id=0,drop=0.05,seed=7' (any subset, any order)."""
        fields: dict = {}
        converters = {
            "krr": ("epsilon", float),
            "epsilon": ("epsilon", float),
            "mask": ("mask", float),
            "mask_id": ("mask_id", int),
            "drop": ("drop", float),
            "seed": ("seed", int),
        }
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key.strip() not in converters or not value:
                raise PerturbError(f"--perturb {text!r}: cannot read {item!r}; the spec is {SPEC_HELP}")
            name, convert = converters[key.strip()]
            try:
                fields[name] = convert(value.strip())
            except ValueError:
                raise PerturbError(
                    f"--perturb {text!r}: {key.strip()} must be a {convert.__name__}, got {value.strip()!r}"
                ) from None
        spec = cls(**fields)
        spec.check()
        return spec

    def check(self) -> None:
        if self.epsilon is None and not self.mask and not self.drop:
            raise PerturbError(f"a perturbation needs at least one of krr, mask and drop; the spec is {SPEC_HELP}")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise PerturbError(f"krr epsilon must be a finite number >= 0, got {self.epsilon}")
        for name in ("mask", "drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PerturbError(f"{name} is a probability from 0 to 1, got {getattr(self, name)}")
        if self.mask and self.mask_id is None:
            raise PerturbError(
                "mask=RATE needs mask_id=ID, the token id that replaces masked tokens "
                "(e.g. the tokenizer's <unk> or <mask> id)"
            )
        if not 0 <= self.seed < 2**63:
            raise PerturbError(f"seed must be an integer from 0 to 2**63-1, got {self.seed}")


def keep_probability(epsilon: float, k: int) -> float:
    """k-ary randomized response keeps the true value with probability e^eps / (e^eps + k - 1)."""
    return 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))


class Perturber:
    """Applies a PerturbSpec to batches of documents over a vocabulary of `vocab_size` ids."""

    def __init__(self, spec: PerturbSpec, vocab_size: int) -> None:
        spec.check()
        if vocab_size < 2:
            raise PerturbError(f"a vocabulary of {vocab_size} ids cannot be perturbed")
        if spec.mask_id is not None and not 0 <= spec.mask_id < vocab_size:
            raise PerturbError(f"mask_id {spec.mask_id} is outside the vocabulary (0 to {vocab_size - 1})")
        self.spec = spec
        self.vocab_size = vocab_size
        self.keep = keep_probability(spec.epsilon, vocab_size) if spec.epsilon is not None else 1.0
        self.rng = np.random.Generator(np.random.PCG64(spec.seed))
        self.changed = 0
        self.dropped = 0
        self.seen = 0

    def provenance(self) -> dict:
        """What the manifest records: floats as decimal strings (a manifest holds no floats)."""
        spec = self.spec
        record: dict = {
            "seed": spec.seed,
            "generator": "numpy PCG64",
            "unit": "token (EOS separators between documents are not perturbed)",
        }
        if spec.epsilon is not None:
            record["krr"] = {
                "epsilon_per_token": repr(spec.epsilon),
                "k": self.vocab_size,
                "keep_probability": repr(self.keep),
            }
        if spec.mask:
            record["mask"] = {"rate": repr(spec.mask), "mask_id": spec.mask_id}
        if spec.drop:
            record["drop"] = {"rate": repr(spec.drop)}
        return record

    def state(self) -> dict:
        """The generator's state and the counts, as JSON, for a store's checkpoint."""
        return {
            "rng": self.rng.bit_generator.state,
            "changed": self.changed,
            "dropped": self.dropped,
            "seen": self.seen,
        }

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.changed, self.dropped, self.seen = int(state["changed"]), int(state["dropped"]), int(state["seen"])

    def apply(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Perturb documents packed as `tokens` (each document's tokens then its EOS) with `lengths` (EOS included).

        Returns new (tokens, lengths): dropping shortens documents, never below their EOS, so the document
        count stays and every document still starts where the new lengths say.
        """
        if not len(tokens):
            return tokens, lengths
        content = np.ones(len(tokens), dtype=bool)
        content[np.cumsum(lengths) - 1] = False
        at = np.flatnonzero(content)
        values = tokens[at].astype(np.int64)
        self.seen += len(values)
        if self.spec.epsilon is not None:
            values = self._randomized_response(values)
        if self.spec.mask:
            assert self.spec.mask_id is not None  # PerturbSpec requires it with mask
            values[self.rng.random(len(values)) < self.spec.mask] = self.spec.mask_id
        out = tokens.copy()
        out[at] = values
        self.changed += int(np.count_nonzero(out != tokens))
        if not self.spec.drop:
            return out, lengths
        keep = np.ones(len(tokens), dtype=bool)
        keep[at[self.rng.random(len(at)) < self.spec.drop]] = False
        self.dropped += len(keep) - int(np.count_nonzero(keep))
        documents = np.repeat(np.arange(len(lengths)), lengths)
        new_lengths = np.bincount(documents[keep], minlength=len(lengths)).astype(lengths.dtype)
        return out[keep], new_lengths

    def _randomized_response(self, values: np.ndarray) -> np.ndarray:
        """Keep each id with probability `keep`, else replace it with one of the other k-1 ids, uniformly."""
        flip = self.rng.random(len(values)) >= self.keep
        other = self.rng.integers(0, self.vocab_size - 1, size=int(np.count_nonzero(flip)))
        true = values[flip]
        values[flip] = other + (other >= true)
        return values
