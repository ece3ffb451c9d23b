"""`kogitune filter --parts N`: exact and MinHash dedup in stages (signatures, buckets, decisions, write) keep
exactly the documents that the sequential `kogitune filter` keeps, on local processes and on Ray."""

import json
import os
import random
import subprocess

import pytest

from kogitune.cli import main
from kogitune.corpora import kjv_verses
from kogitune.filters import staged_run, stages
from kogitune.filters.run import FilterOptions, filter_files
from kogitune.filters.staged_run import filter_in_stages

PIPELINE = {
    "filters": [
        {"name": "nfkc"},
        {"name": "length", "min_chars": 60},
        {"name": "exact_dedup"},
        {"name": "pii"},
        # loose bands, so that many documents share keys and the decisions replay long chains
        {"name": "minhash_dedup", "bands": 20, "rows": 3, "ngram": 3},
        {"name": "length", "max_chars": 600},
    ]
}


@pytest.fixture(scope="module")
def dedup_inputs(tmp_path_factory):
    """Two JSONL files of 3-verse documents with exact copies (case and spacing changed) and edited copies."""
    with open(kjv_verses(), encoding="utf-8") as f:
        verses = [json.loads(line)["text"] for line in f][:6000]
    rng = random.Random(5)
    documents = [" ".join(verses[i : i + 3]) for i in range(0, len(verses), 3)]
    for _ in range(600):
        text = rng.choice(documents)
        if rng.random() < 0.5:
            text = text.upper() if rng.random() < 0.5 else text.replace(" ", "  ")
        else:
            words = text.split()
            for _ in range(max(1, len(words) // 12)):
                words[rng.randrange(len(words))] = rng.choice(words)
            text = " ".join(words)
        documents.insert(rng.randrange(len(documents)), text)
    folder = tmp_path_factory.mktemp("dedup-inputs")
    paths = [folder / "a.jsonl", folder / "b.jsonl"]
    half = len(documents) * 2 // 3
    for path, chunk in zip(paths, (documents[:half], documents[half:])):
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(chunk)))
    return paths


@pytest.fixture(scope="module")
def sequential(dedup_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential") / "out.jsonl"
    report = filter_files(dedup_inputs, out, PIPELINE, FilterOptions(workers=1), progress=False)
    return out.read_bytes(), report


def parts_output(folder, parts):
    return b"".join((folder / f"part-{part:05d}.jsonl").read_bytes() for part in range(parts))


def test_three_parts_on_local_processes_keep_what_the_sequential_filter_keeps(dedup_inputs, sequential, tmp_path):
    expected, report = sequential
    by_name = {f.name: f.dropped for f in report.filters}
    assert by_name["exact_dedup"] > 100 and by_name["minhash_dedup"] > 100  # both dedups have work to do
    staged = filter_in_stages(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=4)
    assert parts_output(tmp_path / "out", 3) == expected
    assert staged.kept == report.kept and staged.documents == report.documents
    assert staged.deduplicated == {"exact_dedup": by_name["exact_dedup"], "minhash_dedup": by_name["minhash_dedup"]}
    assert [p.name for p in (tmp_path / "out" / ".stages").iterdir()] == ["done"]  # the scratch files are removed


def test_exact_dedup_alone_in_parts_on_ray(dedup_inputs, tmp_path, local_ray):
    config = {"filters": [{"name": "exact_dedup"}]}
    filter_files(dedup_inputs, tmp_path / "seq.jsonl", config, FilterOptions(workers=1), progress=False)
    filter_in_stages(dedup_inputs, tmp_path / "out", config, parts=3, buckets=2, executor="ray")
    assert parts_output(tmp_path / "out", 3) == (tmp_path / "seq.jsonl").read_bytes()


def test_slurm_script_tasks_run_here_stage_by_stage_keep_the_same_documents(dedup_inputs, sequential, tmp_path):
    script, out = tmp_path / "filter.sbatch", tmp_path / "out"
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps(PIPELINE))
    argv = ["filter", *map(str, dedup_inputs), "-c", str(config), "--parts", "2", "--buckets", "1", "-o", str(out)]
    assert main([*argv, "--slurm-array", str(script)]) == 0
    text = script.read_text()
    assert text.count("--dependency=afterok") == 5 and not out.exists()
    stage_counts = (("signatures", 2), ("buckets", 2), ("components", 1), ("decisions", 2), ("write", 2), ("finish", 1))
    for stage, count in stage_counts:
        env = [{**os.environ, "SLURM_ARRAY_TASK_ID": str(task)} for task in reversed(range(count))]
        tasks = [subprocess.Popen(["bash", str(script), stage], env=e) for e in env]
        assert [task.wait(timeout=120) for task in tasks] == [0] * count, stage
    assert parts_output(out, 2) == sequential[0]
    assert json.loads((out / "report.json").read_text())["kept"] == sequential[1].kept
    assert main([*argv[:-1], str(tmp_path / "again"), "-q"]) == 0  # all stages from the command, local processes
    assert parts_output(tmp_path / "again", 2) == sequential[0]


def test_tasks_in_one_process_with_a_tiny_key_buffer_keep_the_same_documents(
    dedup_inputs, sequential, tmp_path, monkeypatch
):
    """Each task alone, in shuffled order within a stage; the key buffer is flushed every 50 keys."""
    monkeypatch.setattr(stages, "KEY_BUFFER", 50)
    job = stages.staged_job(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=3)
    for stage in stages.STAGES:
        count = staged_run.stage_tasks(job, stage)
        for task in random.Random(stage).sample(range(count), count):
            staged_run.run_task(job, stage, task)
    report = staged_run.finish(job)
    assert parts_output(tmp_path / "out", 3) == sequential[0] and report.kept == sequential[1].kept


@pytest.mark.parametrize("dedup", [{"name": "exact_dedup"}, PIPELINE["filters"][4]], ids=["exact", "minhash"])
@pytest.mark.parametrize("decision_tasks", [1, 4])
def test_decisions_in_one_or_several_tasks_keep_what_the_sequential_filter_keeps(
    dedup_inputs, tmp_path, dedup, decision_tasks
):
    """The decisions split by connected components of shared keys (kogitune.filters.decisions): each task in this
    process, in shuffled order; T = 1 has no components task."""
    config = {"filters": [{"name": "nfkc"}, dedup]}
    report = filter_files(dedup_inputs, tmp_path / "seq.jsonl", config, FilterOptions(workers=1), progress=False)
    assert report.filters[1].dropped > 100
    job = stages.staged_job(dedup_inputs, tmp_path / "out", config, parts=3, buckets=3, decision_tasks=decision_tasks)
    assert staged_run.stage_tasks(job, "components") == (decision_tasks > 1)
    for stage in (*stages.STAGES, "finish"):
        count = staged_run.stage_tasks(job, stage)
        for task in random.Random(stage).sample(range(count), count):
            staged_run.run_task(job, stage, task)
    assert parts_output(tmp_path / "out", 3) == (tmp_path / "seq.jsonl").read_bytes()
    if decision_tasks > 1:  # the components were spread: more than one task decided something
        decided = [staged_run._counts(job, "decisions", task) for task in range(decision_tasks)]
        assert sum(1 for counts in decided if any(counts.values())) > 1
