"""Running the N parts of a store on an engine that exists already: local processes, Ray, or a Slurm job array.

Every executor runs the same tasks (`store_part` of part I of N into `<output>/parts/<I>`) and then `merge`, so all
give the same collection ID; Kogitune schedules nothing itself. A part already stored is not stored again (its
task reports it `already_stored`), so running the same command again after a failure redoes only what is missing,
and a task killed mid-way goes on from its checkpoint (kogitune.write.checkpoint).
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import KogituneError
from ..layout import part_path
from ..parallel import follow_parent
from .inputs import expand_inputs
from .job import StoreOptions, StoreReport
from .parts import MergeReport, merge, split_inputs, store_part

EXECUTORS = ("local", "ray")


def run_parts(
    inputs: list[str | os.PathLike],
    parts: int,
    output: str | os.PathLike,
    tokenizer: str,
    options: StoreOptions,
    executor: str = "local",
    address: str | None = None,
) -> tuple[list[StoreReport], MergeReport]:
    """Store `parts` parts of `inputs` into `<output>/parts/` with `executor` ("local": up to one process per core;
    "ray": one Ray task per part, on the cluster at `address` or a local Ray instance), then merge them into the
    collection `output`. `tokenizer` is a name or path, loaded by each task."""
    paths = expand_inputs(inputs)
    split_inputs(paths, parts)  # fails here, at once, rather than in every task
    out = Path(output)
    tasks = [(paths, (index, parts), part_path(out, index), tokenizer, options) for index in range(parts)]
    reports = run_tasks(_store_part_task, tasks, executor, address)
    return reports, merge([part_path(out, index) for index in range(parts)], out)


def _store_part_task(paths, task, output, tokenizer, options) -> StoreReport:
    return store_part(paths, task, output, tokenizer, options, progress=False)


def run_tasks(function: Callable, tasks: list[tuple], executor: str = "local", address: str | None = None) -> list:
    """`function(*task)` for every task, in parallel on `executor` ("local": up to one spawned process per core;
    "ray": one Ray task each, on the cluster at `address` or a local Ray instance); the results in task order.
    `function` must be importable by name (a module's top-level function), as the processes import it."""
    if executor == "local":
        processes = min(len(tasks), os.cpu_count() or 1)
        spawn = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(processes, mp_context=spawn, initializer=follow_parent) as pool:
                return list(pool.map(function, *zip(*tasks)))
        except BrokenProcessPool:
            raise KogituneError(
                "a task's process died. If this runs from a script, put the call under "
                '`if __name__ == "__main__":` (the processes are spawned and import the script); else run one '
                "task with --task I/N to see the error"
            ) from None
    if executor == "ray":
        return _run_on_ray(function, tasks, address)
    raise KogituneError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


def _run_on_ray(function: Callable, tasks: list[tuple], address: str | None) -> list:
    try:
        import ray
    except ImportError:
        raise KogituneError("--executor ray needs Ray: pip install 'kogitune[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(function)
    return ray.get([remote.remote(*task) for task in tasks])


def slurm_array_script(
    inputs: list[str], parts: int, output: str | os.PathLike, store_flags: list[str], script: Path
) -> str:
    """An sbatch-ready script: as an array task, it stores part $SLURM_ARRAY_TASK_ID of `parts` into
    `<output>/parts/`; run as `bash SCRIPT`, it submits the array and then the merge, which waits for the whole
    array (`--dependency=afterok`); `bash SCRIPT merge` runs the merge. `store_flags` are the store options, as
    command-line flags. Paths are taken from the directory the script is written in."""
    python = shlex.quote(sys.executable)
    out = shlex.quote(str(output))
    part_dirs = " ".join(shlex.quote(str(part_path(Path(output), index))) for index in range(parts))
    store = " ".join(shlex.quote(str(word)) for word in [*inputs, *store_flags])
    return f"""#!/bin/bash
#SBATCH --job-name=kogitune-store
#SBATCH --array=0-{parts - 1}
#SBATCH --cpus-per-task=4
#SBATCH --output=kogitune-store-%A_%a.log
# Written by `kogitune store --parts {parts} --slurm-array {script.name}`. Each array task stores one part of {parts}
# into {output}/parts/; the merge then writes the collection {output}. Submit the array and the merge with
#     bash {script.name}
# (edit the #SBATCH lines first: partition, time, cores). A task run again skips a part already stored.
set -euo pipefail
cd {shlex.quote(os.getcwd())}
if [ "${{1:-}}" = merge ]; then
    exec {python} -m kogitune.cli merge {part_dirs} -o {out}
fi
if [ -z "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
    job=$(sbatch --parsable "$0")
    sbatch --dependency=afterok:"$job" --array=0 --job-name=kogitune-merge "$0" merge
    echo "submitted array job $job ({parts} parts), and the merge after it"
    exit 0
fi
part=$(printf %05d "$SLURM_ARRAY_TASK_ID")
exec {python} -m kogitune.cli store {store} --task "$SLURM_ARRAY_TASK_ID/{parts}" -o {out}/parts/"$part" --quiet
"""
