"""JSON decoding with a bound on nesting depth, for every JSON that Kogitune reads from a file or a socket.

Python's json module recurses once per nested array or object: a few kilobytes of `[[[[...` make it raise
RecursionError (not ValueError), and a document that does decode can still be too deep for the code that walks it
next (repr, copy.deepcopy, json.dumps and Kogitune's own checks recurse too). `loads` turns the decoder's
RecursionError into a ValueError and refuses a decoded value nested deeper than `max_depth`, so the caller handles
one kind of error and can then walk the value freely. The caller bounds the size: it knows the limit of its file.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64
"""Arrays and objects nested inside each other, at most, in any JSON that Kogitune reads (manifests, control
requests and replies, marks and checkpoint files). Kogitune's own documents nest 4 deep at most, a manifest's
provenance (which holds a filter configuration) a few more."""


def loads(data: bytes | str, max_depth: int = MAX_JSON_DEPTH, **options: Any) -> Any:
    """json.loads that raises ValueError (json.JSONDecodeError for bad syntax) for a document nested deeper than
    `max_depth`; `options` go to json.loads."""
    try:
        value = json.loads(data, **options)
    except RecursionError:  # the C decoder gives up cleanly at the interpreter's recursion limit
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    if json_depth(value, max_depth) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return value


def json_depth(value: object, stop_after: int) -> int:
    """How deep lists and dicts nest in `value` (0 for a scalar), counted one level at a time without recursion;
    counting stops one level past `stop_after`."""
    level = [value] if isinstance(value, (list, dict)) else []
    depth = 0
    while level and depth <= stop_after:
        depth += 1
        level = [
            child
            for parent in level
            for child in (parent.values() if isinstance(parent, dict) else parent)
            if isinstance(child, (list, dict))
        ]
    return depth
