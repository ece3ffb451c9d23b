"""A staged filter run again skips the tasks an earlier run did (their records hold: same job, same files), redoes
the others, and gives the same output; `--status` says which tasks are done."""

import json
import os
import signal
import subprocess
import sys
import time

from test_filter_stages import PIPELINE, parts_output
from test_filter_stages import dedup_inputs as dedup_inputs  # a fixture
from test_filter_stages import sequential as sequential  # a fixture

from kogitune.cli import main
from kogitune.filters import staged_run
from kogitune.filters.staged_run import filter_in_stages
from kogitune.filters.stages import staged_job

WAIT_SECONDS = 120


def test_a_run_killed_midway_and_run_again_skips_what_was_done_and_gives_the_same_output(
    dedup_inputs, sequential, tmp_path, capsys
):
    config, out = tmp_path / "pipeline.json", tmp_path / "out"
    config.write_text(json.dumps(PIPELINE))
    argv = ["filter", *map(str, dedup_inputs), "-c", str(config), "--parts", "3", "--buckets", "2", "-o", str(out)]
    run = subprocess.Popen([sys.executable, "-m", "kogitune.cli", *argv, "-q"], start_new_session=True)
    done = out / ".stages" / "done"
    deadline = time.monotonic() + WAIT_SECONDS
    while not (done.is_dir() and any(done.glob("signatures-*.json"))):  # a task finished: kill the run now
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before a task finished"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)  # the command and its task processes, whatever they were doing
    run.wait(timeout=WAIT_SECONDS)
    assert not (out / "report.json").exists()
    # a record being written when the kill came is left as a temporary dot-file beside them (files.write_atomic)
    recorded = sorted(p.name for p in done.iterdir() if not p.name.startswith("."))
    assert main([*argv, "--status"]) == 0
    status = capsys.readouterr().out
    assert "finish      0 of 1 tasks done" in status and "not finished" in status
    assert f"signatures  {sum(n.startswith('signatures') for n in recorded)} of 3 tasks done" in status

    assert main([*argv, "-q"]) == 0
    summary = capsys.readouterr().out
    assert f"{len(recorded)} tasks were done already" in summary
    assert parts_output(out, 3) == sequential[0]
    assert main([*argv, "--status"]) == 0
    assert "finish      1 of 1 tasks done" in capsys.readouterr().out


def test_a_finished_run_runs_nothing_and_one_whose_output_changed_redoes_it(dedup_inputs, sequential, tmp_path):
    job = staged_job(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=2)
    filter_in_stages(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=2)
    assert not any(staged_run.run_task(job, "signatures", task) for task in range(3))  # finished: all skipped
    again = filter_in_stages(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=2)
    assert again.tasks_done_before == sum(staged_run.stage_tasks(job, s) for s in (*staged_run.STAGES, "finish"))
    damaged = tmp_path / "out" / "part-00001.jsonl"
    data = damaged.read_bytes()
    damaged.write_bytes(data.replace(b"e", b"E", 1))  # same size: only the hash tells
    repaired = filter_in_stages(dedup_inputs, tmp_path / "out", PIPELINE, parts=3, buckets=2)
    assert damaged.read_bytes() == data and parts_output(tmp_path / "out", 3) == sequential[0]
    assert repaired.kept == sequential[1].kept and repaired.tasks_done_before < again.tasks_done_before
