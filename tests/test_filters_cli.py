"""`kogitune filter` and `kogitune store --filters` on real English (KJV) and Japanese JSONL."""

import gzip
import json
import unicodedata

import pytest
import zstandard

from kogitune.cli import main
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import BadInputError
from kogitune.filters import FilterError, Pipeline
from kogitune.filters.run import FilterOptions, filter_files, report_path
from kogitune.filters.samples import CHINESE, JAPANESE
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

CONFIG = {
    "filters": [
        {"name": "nfkc"},
        {"name": "whitespace"},
        {"name": "length", "min_chars": 50},
        {"name": "language", "languages": ["en", "ja"]},
        {"name": "pii"},
        {"name": "exact_dedup"},
    ]
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """150 KJV chapters, then Japanese, Chinese, a duplicate, PII and junk, each line with an id to keep."""
    directory = tmp_path_factory.mktemp("corpus")
    kjv = write_kjv_chapters(directory / "kjv.jsonl", limit=150)
    lines = [json.loads(line) for line in kjv.read_text(encoding="utf-8").splitlines()]
    lines += [{"text": text} for text in JAPANESE]
    lines += [{"text": text} for text in CHINESE]
    lines += [{"text": JAPANESE[0]}, {"text": "短い。"}, {"text": "   \n\t "}]
    lines += [{"text": "ｍａｉｌ： taro@example.jp、電話 03-1234-5678。" + JAPANESE[1]}]
    path = directory / "mixed.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for number, line in enumerate(lines):
            f.write(json.dumps({"id": number, **line}, ensure_ascii=False) + "\n")
    return path


def _read_jsonl(path):
    opener = gzip.open if path.name.endswith(".gz") else open
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
        return [json.loads(line) for line in data.decode().splitlines()]
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_filter_writes_kept_documents_and_a_report(corpus, tmp_path):
    out = tmp_path / "out" / "clean.jsonl"
    report = filter_files([corpus], out, CONFIG, FilterOptions(workers=1), progress=False)
    kept = _read_jsonl(out)
    assert report.documents == 150 + 8 + 5 + 4 and report.empty_documents == 0
    assert len(kept) == report.kept == 150 + 8 + 1
    assert [d["id"] for d in kept] == sorted(d["id"] for d in kept), "input order is kept"
    pii = kept[-1]["text"]
    assert pii.startswith("mail: <EMAIL>、電話 <PHONE>。"), "NFKC runs first, so full-width text is caught too"
    saved = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert saved["config"]["filters"][2] == {
        "name": "length",
        "min_chars": 50,
        "max_chars": None,
        "min_bytes": None,
        "max_bytes": None,
        "min_words": None,
        "max_words": None,
    }
    by_name = {f["name"]: f for f in saved["filters"]}
    assert by_name["whitespace"]["reasons"] == {"empty": 1}
    assert by_name["length"]["reasons"] == {"too_few_chars": 1}
    assert by_name["language"]["reasons"] == {"lang_zh": 5}
    assert by_name["exact_dedup"]["dropped"] == 1
    example = by_name["language"]["examples"]["lang_zh"][0]
    assert example["file"] == "mixed.jsonl" and example["line"] == 159
    assert example["text"] == unicodedata.normalize("NFKC", CHINESE[0])
    scores = by_name["length"]["scores"]
    assert scores["count"] == 166 and scores["p0"] <= scores["p50"] <= scores["p100"]
    assert by_name["pii"]["changed"] == 1 and by_name["pii"]["bytes_removed_by_changes"] > 0
    assert saved["bytes_kept"] == sum(len(d["text"].encode()) for d in kept)
    assert saved["inputs"][0]["name"] == "mixed.jsonl" and len(saved["inputs"][0]["sha256"]) == 64


def test_two_workers_give_the_same_output_and_report(corpus, tmp_path):
    """Stateless filters run in two spawned workers, exact_dedup in the main process, in input order."""
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl.gz"
    filter_files([corpus], one, CONFIG, FilterOptions(workers=1), progress=False)
    filter_files([corpus, corpus], two, CONFIG, FilterOptions(workers=2), progress=False)
    assert _read_jsonl(two) == _read_jsonl(one), "the second copy of the input is all duplicates"
    first = json.loads(report_path(one).read_text())
    second = json.loads(report_path(two).read_text())
    assert second["filters"][5]["dropped"] == 2 * first["filters"][5]["dropped"] + first["kept"]
    assert second["filters"][3]["scores"]["p50"] == first["filters"][3]["scores"]["p50"]


def test_zstd_output_and_dry_run(corpus, tmp_path):
    out = tmp_path / "clean.jsonl.zst"
    filter_files([corpus], out, CONFIG, FilterOptions(workers=1), progress=False)
    assert len(_read_jsonl(out)) == 159
    dry = tmp_path / "dry.jsonl"
    report = filter_files([corpus], dry, CONFIG, FilterOptions(workers=1, dry_run=True), progress=False)
    assert not dry.exists() and report_path(dry).exists() and report.kept == 159
    assert "dry run, nothing written: kept 159 of 167 documents" in report.summary()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.jsonl.zst", "clean.report.json", "dry.report.json"]


def test_malformed_lines_name_file_and_line_and_leave_no_output(tmp_path):
    source = tmp_path / "bad.jsonl"
    sentence = "The line before the bad ones is a fine sentence of plain English text."
    source.write_text('{"text": "' + sentence + '"}\n{"text": 3}\nnot json\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(BadInputError, match=r"bad.jsonl, line 2: 'text' is int, not a string.*--skip-bad-lines"):
        filter_files([source], out, CONFIG, FilterOptions(workers=1), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"], "no output and no temporary file"
    report = filter_files([source], out, CONFIG, FilterOptions(workers=1, skip_bad_lines=True), progress=False)
    assert report.bad_lines == 2 and report.kept == 1


def test_cli_filter_and_its_errors(corpus, tmp_path, capsys):
    config = tmp_path / "filters.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "clean.jsonl"
    assert main(["filter", str(corpus), "-o", str(out), "--config", str(config), "--workers", "1", "-q"]) == 0
    assert "kept 159 of 167 documents" in capsys.readouterr().out
    config.write_text(json.dumps({"filters": [{"name": "length", "min_char": 3}]}))
    assert main(["filter", str(corpus), "-o", str(out), "--config", str(config), "-q"]) == 2
    assert "no parameter 'min_char'" in capsys.readouterr().err
    assert main(["filter", str(corpus), "--config", str(config), "-q"]) == 2
    assert main(["filter", str(corpus), "-o", str(out), "-q"]) == 2
    assert "no filters given" in capsys.readouterr().err
    config.write_text("[" * 5000 + "]" * 5000)  # RecursionError, a traceback, before the depth bound
    assert main(["filter", str(corpus), "-o", str(out), "--config", str(config), "-q"]) == 2
    assert "JSON nested deeper than 64 levels" in capsys.readouterr().err
    flags = ["-f", "nfkc", "-f", "length:min_chars=50", "-f", "language:languages=zh", "--workers", "1", "-q"]
    assert main(["filter", str(corpus), "-o", str(out), *flags]) == 0
    assert [d["id"] for d in _read_jsonl(out)] == [158, 159, 160, 161, 162]


def test_store_with_filters_records_them_and_refuses_dedup(corpus, tmp_path):
    config = {
        "filters": [{"name": "nfkc"}, {"name": "length", "min_chars": 100}, {"name": "language", "languages": ["ja"]}]
    }
    options = StoreOptions(block_size=128, workers=2, filters=config)
    report = store([corpus], "gpt2", tmp_path / "ja", options, progress=False)
    assert report.documents == 10 and report.filtered_documents == 157
    provenance = DataTensor(tmp_path / "ja").manifest.provenance
    assert provenance["filters"]["filters"][2] == {
        "name": "language",
        "languages": ["ja"],
        "min_confidence": "0.5",
        "max_chars": 2000,
    }
    assert Pipeline.from_config(provenance["filters"]).to_config()["filters"][2]["min_confidence"] == 0.5
    assert provenance["skipped"]["filtered_documents"] == 157
    with pytest.raises(FilterError, match="cannot run exact_dedup.*kogitune filter"):
        store([corpus], "gpt2", tmp_path / "dedup", StoreOptions(filters=CONFIG), progress=False)
    assert not (tmp_path / "dedup").exists()


def test_store_without_filters_is_unchanged(corpus, tmp_path):
    """No filters: nothing about filters in the manifest, and the same dataset ID as an identity pipeline's text."""
    plain = store([corpus], "gpt2", tmp_path / "plain", StoreOptions(block_size=128, workers=1), progress=False)
    manifest = DataTensor(tmp_path / "plain").manifest
    assert "filters" not in manifest.provenance and "filtered_documents" not in manifest.provenance["skipped"]
    identity = StoreOptions(block_size=128, workers=1, filters={"filters": []})
    filtered = store([corpus], "gpt2", tmp_path / "identity", identity, progress=False)
    assert filtered.tokens == plain.tokens and filtered.documents == plain.documents
    assert filtered.dataset_id != plain.dataset_id, "the provenance records the (empty) pipeline"
