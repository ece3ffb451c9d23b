"""`kogitune filter --parts N`: the filter run in stages of tasks (kogitune.filters.stages), on local processes, Ray,
or a Slurm job-array script; and `--stage S --task I/N`, one task, as the script's array tasks run it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import KogituneError
from .common import EXIT_OK, at_least, task_of

STAGE_CHOICES = ("signatures", "buckets", "components", "decisions", "write", "finish")


def add_arguments(filter_) -> None:
    """The flags of a staged run, on the `filter` command's parser."""
    filter_.add_argument(
        "--parts",
        type=at_least(1, int),
        metavar="N",
        help="filter in N parts (the split of `store --parts N`), dedup in stages; -o is then a directory that gets "
        "part-00000.jsonl ... (together, the output of a run without --parts) and report.json",
    )
    filter_.add_argument(
        "--buckets", type=at_least(1, int), metavar="B", help="with --parts: dedup keys in B buckets (default: N)"
    )
    filter_.add_argument(
        "--decision-tasks",
        type=at_least(1, int),
        metavar="T",
        help="with --parts: decide the dedup in T tasks, each the documents of some chains of shared keys, so each "
        "holds about 1/T of the keys (default: N)",
    )
    filter_.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="with --parts: 'local' processes (default), or 'ray', one Ray task per task of a stage",
    )
    filter_.add_argument("--address", help="with --executor ray: the Ray cluster's address (default: a local Ray)")
    filter_.add_argument(
        "--keep-lists",
        action="store_true",
        help="with --parts: write no JSONL, only the decisions: -o DIR gets keep/part-00000.u64 ... (the lines each "
        "part keeps) and keep-lists.json, which `kogitune store INPUTS --keep-lists DIR` applies while it tokenizes",
    )
    filter_.add_argument(
        "--slurm-array",
        metavar="SCRIPT",
        help="with --parts: write an sbatch script (one job array per stage, each after the one before) instead",
    )
    filter_.add_argument(
        "--stage", choices=STAGE_CHOICES, help="with --parts and --task I/N: run only task I of this stage"
    )
    filter_.add_argument("--task", type=task_of, metavar="I/N", help="with --stage: the task to run")
    filter_.add_argument(
        "--status",
        action="store_true",
        help="with --parts (and the run's other flags): say which tasks of each stage are done (recorded for this "
        "job, their files of the sizes recorded) and which are left; a run again skips the done ones",
    )


def filter_in_parts(args, config: dict) -> int:
    """Run `kogitune filter ... --parts N` as `args` say: all stages, one task, or write a Slurm script."""
    from ..filters.run import FilterOptions
    from ..filters.staged_run import filter_in_stages, run_task, stage_tasks, stages_status
    from ..filters.stages import staged_job
    from .common import document_limit, mib

    if args.output is None or args.dry_run:
        raise KogituneError("--parts needs the output directory -o DIR, and writes the parts (no --dry-run)")
    options = FilterOptions(
        text_key=args.text_key,
        workers=1,
        skip_bad_lines=args.skip_bad_lines,
        examples=args.examples,
        **document_limit(mib(args.max_document_size)),
    )
    if args.status:
        job = staged_job(
            args.files, args.output, config, args.parts, args.buckets, options, args.keep_lists, args.decision_tasks
        )
        print("\n".join(stages_status(job)))
        return EXIT_OK
    if args.stage is not None:
        if args.task is None:
            raise KogituneError("--stage needs --task I/N")
        job = staged_job(
            args.files, args.output, config, args.parts, args.buckets, options, args.keep_lists, args.decision_tasks
        )
        if args.task[1] != stage_tasks(job, args.stage):
            raise KogituneError(f"stage {args.stage} has {stage_tasks(job, args.stage)} tasks, not {args.task[1]}")
        if not run_task(job, args.stage, args.task[0]) and not args.quiet:
            print(f"{args.stage} task {args.task[0]}: done already (its record holds); skipped")
        return EXIT_OK
    if args.slurm_array:
        job = staged_job(
            args.files, args.output, config, args.parts, args.buckets, options, args.keep_lists, args.decision_tasks
        )
        script = Path(args.slurm_array)
        counts = {stage: stage_tasks(job, stage) for stage in STAGE_CHOICES}
        script.write_text(slurm_stages_script(args, config, counts, script))
        script.chmod(0o755)
        print(f"wrote {script}: the stages of {args.parts} parts as dependent job arrays; submit with bash {script}")
        return EXIT_OK
    report = filter_in_stages(
        args.files,
        args.output,
        config,
        args.parts,
        args.buckets,
        options,
        args.executor,
        args.address,
        args.keep_lists,
        args.decision_tasks,
    )
    print(report.summary())
    return EXIT_OK


def slurm_stages_script(args, config: dict, counts: dict[str, int], script: Path) -> str:
    """An sbatch-ready script: `bash SCRIPT` submits one job array per stage, each waiting for the one before
    (`--dependency=afterok`); as an array task, `SCRIPT STAGE` runs task $SLURM_ARRAY_TASK_ID of STAGE."""
    import json
    import os

    flags = ["--parts", str(args.parts), "-o", str(args.output), "--text-key", args.text_key]
    flags += ["--buckets", str(args.buckets)] if args.buckets else []
    flags += ["--decision-tasks", str(args.decision_tasks)] if args.decision_tasks else []
    flags += ["--skip-bad-lines"] if args.skip_bad_lines else []
    flags += ["--keep-lists"] if args.keep_lists else []
    flags += ["--max-document-size", str(args.max_document_size)] if args.max_document_size is not None else []
    config_file = script.with_suffix(".filters.json")
    config_file.write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    command = " ".join(shlex.quote(str(w)) for w in [*args.files, *flags, "--config", config_file.resolve()])
    submit: list[str] = []
    after = ""
    for stage, n in counts.items():
        if n:
            submit.append(f'job=$(sbatch --parsable {after}--array=0-{n - 1} --job-name=kogitune-{stage} "$0" {stage})')
            after = '--dependency=afterok:"$job" '
    tasks = " ".join(f"{stage}) count={n} ;;" for stage, n in counts.items())
    lines = "\n    ".join(submit)
    return f"""#!/bin/bash
#SBATCH --cpus-per-task=1
#SBATCH --output=kogitune-filter-%A_%a.log
# Written by `kogitune filter --parts {args.parts} --slurm-array {script.name}`: the stages of a staged filter
# (docs/filters.md, "Filtering in parts"), each a job array that waits for the one before. Submit with
#     bash {script.name}
# (edit the #SBATCH lines first: partition, time, memory). The pipeline is {config_file.name}, beside this script.
set -euo pipefail
cd {shlex.quote(os.getcwd())}
if [ -z "${{1:-}}" ]; then
    {lines}
    echo "submitted the stages of {args.parts} parts; the last is job $job"
    exit 0
fi
case "$1" in {tasks} *) echo "unknown stage $1"; exit 2 ;; esac
exec {shlex.quote(sys.executable)} -m kogitune.cli filter {command} --stage "$1" \\
    --task "${{SLURM_ARRAY_TASK_ID}}/$count" --quiet
"""
