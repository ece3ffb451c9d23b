"""Executors: `store --parts N` on local processes, on Ray, and as a Slurm job-array script run here as local
processes; all give the collection ID of N separate `--task` runs (tests/test_parts.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import OPTIONS, PARTS_FLAGS

from kogitune.cli import main
from kogitune.collection import DataCollection
from kogitune.write.executors import run_parts


def test_ray_tasks_make_the_same_collection(parts_inputs, parts_collection, tmp_path, local_ray):
    reports, merged = run_parts(parts_inputs, 4, tmp_path / "coll", "gpt2", OPTIONS, executor="ray")
    assert merged.dataset_id == parts_collection.dataset_id
    assert not any(report.already_stored for report in reports)


def test_slurm_array_tasks_run_here_make_the_same_collection(parts_inputs, parts_collection, tmp_path, capsys):
    script, out = tmp_path / "store.sbatch", tmp_path / "coll"
    argv = ["store", *map(str, parts_inputs), "--parts", "4", "-o", str(out), "--slurm-array", str(script)]
    assert main([*argv, *PARTS_FLAGS]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-3" in text and "--dependency=afterok" in text and not out.exists()
    tasks = [
        subprocess.Popen(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i)}) for i in (3, 1, 0, 2)
    ]
    assert [task.wait(timeout=120) for task in tasks] == [0] * 4
    assert subprocess.run(["bash", str(script), "merge"], timeout=60, capture_output=True).returncode == 0
    assert DataCollection(out).dataset_id == parts_collection.dataset_id


def test_running_the_parts_again_stores_only_what_is_missing(parts_inputs, parts_collection, tmp_path, capsys):
    out = tmp_path / "coll"
    argv = ["store", *map(str, parts_inputs), "--parts", "4", "-o", str(out), *PARTS_FLAGS]
    assert main(argv) == 0
    shutil.rmtree(out / "parts" / "00002")  # as if its task had died
    capsys.readouterr()
    assert main([*argv, "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0].startswith("part 00000  stored, verified  kg1-") and status[2] == "part 00002  not started"
    assert status[4] == "collection  not merged (3 of 4 parts stored)"
    assert main(argv) == 0
    assert "1 parts stored, 3 already stored" in capsys.readouterr().out
    assert DataCollection(out).dataset_id == parts_collection.dataset_id
    assert main([*argv, "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[4] == f"collection  merged  {parts_collection.dataset_id}"
