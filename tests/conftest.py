"""Shared fixtures and helpers: real KJV text, the built-in offline gpt2 tokenizer, real stores (no mocks).

The expensive things (stores, a trained tokenizer) are session fixtures. Tests that damage a tensor work on a copy
(`copy_tensor`), never on a fixture's directory.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from kogitune.corpora import write_kjv_chapters
from kogitune.tensor import DataTensor
from kogitune.tokenizer import load_tokenizer
from kogitune.write import StoreOptions, StoreReport, store

EOS_TEXT = "<|endoftext|>"
BLOCK = 128
PIECE = 64 << 10
# Shards of 160 KiB (640 blocks of 128 uint16 tokens), each hashed as pieces of 64 + 64 + 32 KiB.
SHARD = 160 << 10
OPTIONS = StoreOptions(block_size=BLOCK, shard_size=SHARD, piece_size=PIECE, workers=1)


# ---- helpers ----------------------------------------------------------------------------------------------------


@functools.cache
def gpt2_tokenizer():
    """The built-in offline gpt2, loaded once per process."""
    return load_tokenizer("gpt2")


def store_quietly(files, output, options: StoreOptions = OPTIONS, tokenizer=None) -> StoreReport:
    """`store` (with gpt2 unless told otherwise) without a progress bar; a single path may be given for `files`."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return store(files, tokenizer or gpt2_tokenizer(), output, options, progress=False)


def read_texts(path, key: str = "text") -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)[key] for line in f if line.strip()]


def write_texts(path, texts, key: str = "text") -> Path:
    """Write `texts` as JSONL, one `{key: text}` object a line."""
    path = Path(path)
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def write_lines(path, lines: list[bytes]) -> Path:
    """Write raw lines (bytes, each without its newline)."""
    path = Path(path)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def json_line(text: str, key: str = "text") -> bytes:
    return json.dumps({key: text}).encode()


def document_lengths(tokenizer, texts) -> list[int]:
    """Tokens per stored document: its tokens plus one EOS."""
    return [len(ids) + 1 for ids in tokenizer.encode_batch(list(texts))]


def expected_tokens(tokenizer, texts) -> np.ndarray:
    """What a store must hold: each text's tokens followed by EOS, computed independently of the store code."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(list(texts)):
        stream.extend(ids)
        stream.append(tokenizer.eos_id)
    return np.array(stream, dtype=np.int64)


def stored_tokens(tensor: DataTensor) -> np.ndarray:
    """Every stored token including the last block's padding, read from the shard files as raw bytes."""
    dtype = np.dtype(f"<u{tensor.manifest.itemsize}")
    return np.concatenate([np.fromfile(tensor.path / s.tokens_path, dtype=dtype) for s in tensor.shards])


def copy_tensor(tensor: DataTensor | Path, destination: Path) -> Path:
    """A private copy of a tensor directory (its verification marks included), for tests that damage it."""
    source = tensor.path if isinstance(tensor, DataTensor) else Path(tensor)
    shutil.copytree(source, destination)
    return destination


def flip_byte(path: Path, offset: int) -> None:
    """Invert the bits of one byte of a file, in place (same inode and size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        assert len(byte) == 1, f"{path} has no byte {offset}"
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def file_states(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, inode) of every file under `directory`, to prove that nothing was rewritten."""
    states = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            st = path.stat()
            states[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return states


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="session")
def kjv_corpus(corpus_dir) -> Path:
    """The first 200 KJV chapters (870 KB, ~209k gpt2 tokens): three shards of the OPTIONS layout."""
    return write_kjv_chapters(corpus_dir / "kjv.jsonl", limit=200)


@pytest.fixture(scope="session")
def kjv_texts(kjv_corpus) -> list[str]:
    return read_texts(kjv_corpus)


@pytest.fixture(scope="session")
def kjv_expected(gpt2, kjv_texts) -> np.ndarray:
    """The tokens that the main tensor must hold (see expected_tokens)."""
    return expected_tokens(gpt2, kjv_texts)


@pytest.fixture(scope="session")
def kjv_lengths(gpt2, kjv_texts) -> list[int]:
    return document_lengths(gpt2, kjv_texts)


@pytest.fixture(scope="session")
def small_corpus(corpus_dir) -> Path:
    """The first 40 chapters (150 KB, ~38k tokens): two shards of 64 KiB at block size 64."""
    path = corpus_dir / "small" / "kjv.jsonl"
    path.parent.mkdir()
    return write_kjv_chapters(path, limit=40)


@pytest.fixture(scope="session")
def small_texts(small_corpus) -> list[str]:
    return read_texts(small_corpus)


PARTS_FLAGS = ["--block-size", str(BLOCK), "--shard-size", str(SHARD / (1 << 20)), "--piece-size", "64", "--quiet"]
"""OPTIONS as `kogitune store` flags."""


def cli(*argv) -> list[str]:
    """The command line of `kogitune ARGV...` in a process of its own."""
    return [sys.executable, "-m", "kogitune.cli", *map(str, argv)]


@pytest.fixture(scope="session")
def parts_inputs(tmp_path_factory, small_corpus) -> list[Path]:
    """Inputs for parts: a Parquet file of 4 row groups (cut between them), a plain JSONL file (cut at line starts)
    and a small .gz (whole only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parts-inputs")
    lines = small_corpus.read_bytes().splitlines(keepends=True)
    (root / "a.jsonl").write_bytes(b"".join(lines[:30]))
    (root / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[30:33])))
    texts = [json.loads(line)["text"] for line in lines[33:]]
    pq.write_table(pa.table({"text": texts}), root / "c.parquet", row_group_size=2)
    return [root / "c.parquet", root / "a.jsonl", root / "b.jsonl.gz"]


@pytest.fixture(scope="session")
def parts_collection(parts_inputs, tmp_path_factory):
    """`store --parts 4` of parts_inputs: the four parts by local processes, then the merge."""
    from kogitune.cli import main
    from kogitune.collection import DataCollection

    out = tmp_path_factory.mktemp("parts-run") / "coll"
    assert main(["store", *map(str, parts_inputs), "--parts", "4", "-o", str(out), *PARTS_FLAGS]) == 0
    return DataCollection(out)


@pytest.fixture(scope="session")
def kjv_report(kjv_corpus, tmp_path_factory) -> StoreReport:
    """The main tensor, stored once with OPTIONS (workers=1). Read it, never damage it: copy it first."""
    return store_quietly(kjv_corpus, tmp_path_factory.mktemp("stored") / "kjv", OPTIONS)


@pytest.fixture(scope="session")
def kjv_tensor(kjv_report) -> DataTensor:
    return DataTensor(kjv_report.path)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, kjv_texts) -> Path:
    """A second, different tokenizer: a 400-token byte-level BPE trained on KJV text, saved as
    `kjvbpe/tokenizer.json` with "<|endoftext|>" as its special end-of-text token. Returns the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS_TEXT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(kjv_texts[:20], trainer)
    directory = tmp_path_factory.mktemp("tokenizers") / "kjvbpe"
    directory.mkdir()
    backend.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture
def nodes(tmp_path):
    """start(name, bootstrap=(), env=None, flags=()): a node process (netnodes.NodeProcess) in tmp_path/name, closed
    after the test; `flags` go to `kogitune node start`."""
    from netnodes import NodeProcess

    started = []

    def start(name: str, bootstrap=(), env=None, flags=()):
        node = NodeProcess(tmp_path / name, bootstrap, env, flags=flags)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for the session (starting one takes about 5 s)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
