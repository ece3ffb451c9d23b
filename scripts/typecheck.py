"""Type-check Kogitune with mypy, under the module names the package installs: `python scripts/typecheck.py`.

protocol/ installs as kogitune.protocol and node/ as kogitune.node ([tool.setuptools.package-dir] in
pyproject.toml). mypy maps a module name to a path by directories only, and it cannot follow the import hook of an
editable install, so a plain `mypy -p kogitune.protocol` finds nothing. This script lists every source file under the
name setuptools gives it and runs mypy's own build on that list; settings come from [tool.mypy] in pyproject.toml
(strict on kogitune.protocol), and extra arguments go to mypy (e.g. --no-incremental). The exit code is mypy's:
0 clean, 1 type errors, 2 a blocking error.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy depends on tomli before Python 3.11
    import tomli as tomllib

from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


def sources() -> list[BuildSource]:
    """Every .py file of every package in [tool.setuptools.package-dir], named as it is once installed."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = []
    for package, folder in package_dirs.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(BuildSource(str(path.relative_to(ROOT)), ".".join((package, *parts))))
    return found


def main() -> int:
    start = time.time()
    os.chdir(ROOT)  # mypy reads [tool.mypy] from ./pyproject.toml
    fscache = FileSystemCache()
    _, options = process_options(sys.argv[1:], require_targets=False, fscache=fscache)
    files = sources()
    _, messages, blockers = run_build(files, options, fscache, start, sys.stdout, sys.stderr)
    errors = [line for line in messages if ": error:" in line]
    if errors:
        print(
            f"Found {len(errors)} error{'s' * (len(errors) != 1)} (checked {len(files)} source files)", file=sys.stderr
        )
    else:
        print(f"Success: no issues found in {len(files)} source files")
    return 2 if blockers else 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
