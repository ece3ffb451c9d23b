"""README.md's Use section runs as written: its shell block, then its Python block, in a fresh folder that holds
what a clone holds at its root (examples/), with `kogitune` and `python` on PATH as an activated venv has them.
Extracted from README.md on each run, so the README stays true. The example filter configs shipped in examples/
are the ones docs/filters.md shows."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USE_SECONDS = 120
"""The whole Use section takes about 10 s on 2 shared cores; this bounds a hang."""


def use_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    use = text[text.index("## Use") :]
    use = use[: use.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", use, re.S)


def activated_venv(folder: Path) -> dict:
    """An environment whose PATH starts with `kogitune` and `python` of this interpreter (as console scripts are,
    with the `if __name__ == "__main__"` guard that worker processes need), and no node home of the caller's."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    for name, command in (("python", f'"{sys.executable}"'), ("kogitune", f'"{sys.executable}" -m kogitune.cli')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOGITUNE_")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "KOGITUNE_READ_TIMEOUT": "5"}


def test_the_use_section_runs_as_written(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = activated_venv(tmp_path)
    [shell] = use_blocks("bash")
    [python] = use_blocks("python")
    try:
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", shell],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=USE_SECONDS,
        )
    finally:  # a node the block started and did not stop (it failed halfway) must not outlive the test
        for home in (tmp_path / "node-a", tmp_path / "node-b"):
            if (home / "control.sock").exists():
                subprocess.run(["kogitune", "node", "stop", "--home", str(home)], env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    dataset_id = re.search(r"dataset id (kg1-\S+)", ran.stdout).group(1)
    assert f"removed {dataset_id}" in ran.stdout and "ANNOUNCED" in ran.stdout
    (tmp_path / "use.py").write_text(python)
    ran = subprocess.run(
        [sys.executable, "use.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=USE_SECONDS
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_example_filter_configs_are_those_of_the_docs():
    shown = [
        json.loads(block) for block in re.findall(r"```json\n(.*?)```", (ROOT / "docs/filters.md").read_text(), re.S)
    ]
    for name in ("en.json", "ja-web.json"):
        assert json.loads((ROOT / "examples/filters" / name).read_text()) in shown, name
