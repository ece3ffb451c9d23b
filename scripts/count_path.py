"""Count the files the path of bytes runs through, from `publish` to a batch on another host (docs/architecture.md).

`python scripts/count_path.py` stores a small tensor, then, in this one process, runs a node (in a thread, on
127.0.0.1) that publishes it and a trainer (its embedded node) that opens `DatasetRecipe([id])` with that node as
its bootstrap peer and collates a batch of 4 samples. A profiler records every Kogitune function called on the way,
in every thread (module-level code, run at import, is not counted). It prints the files and the functions each
ran, publish and training apart, then the number of files in all.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kogitune", "node", "protocol")
calls: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
phase = ""


def profile(frame, event, arg):
    if phase and event == "call" and frame.f_code.co_name != "<module>":
        path = os.path.relpath(frame.f_code.co_filename, ROOT)
        if path.split(os.sep)[0] in PACKAGES:
            calls[phase][path].add(frame.f_code.co_name)


def main() -> None:
    global phase
    tmp = Path(tempfile.mkdtemp(prefix="kogitune-path-"))
    os.environ["KOGITUNE_HOME"] = str(tmp / "trainer")
    os.environ.pop("KOGITUNE_BOOTSTRAP", None)

    import torch
    import trio

    from kogitune.corpora import write_kjv_chapters
    from kogitune.node.daemon import Node, NodeConfig
    from kogitune.recipe import DatasetRecipe
    from kogitune.write import StoreOptions, store

    corpus = write_kjv_chapters(tmp / "kjv.jsonl", limit=20)
    options = StoreOptions(block_size=64, piece_size=64 << 10, shard_size=64 << 10, workers=1)
    store([corpus], "gpt2", tmp / "kjv", options, progress=False)
    published: dict[str, str] = {}
    ready, done = threading.Event(), threading.Event()

    async def publisher() -> None:
        global phase
        node = Node(NodeConfig(home=tmp / "publisher", listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[]))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            phase = "publish"
            published["id"] = await node.publish(str(tmp / "kjv"))
            phase = ""
            published["address"] = f"{node.addresses()[0]}/p2p/{node.peer_id}"
            ready.set()
            await trio.to_thread.run_sync(done.wait)
            node.stop()

    threading.setprofile(profile)
    sys.setprofile(profile)
    thread = threading.Thread(target=trio.run, args=(publisher,), daemon=True)
    thread.start()
    if not ready.wait(120):
        raise SystemExit("the publishing node did not start")
    os.environ["KOGITUNE_BOOTSTRAP"] = published["address"]
    phase = "train"
    dataset = DatasetRecipe([published["id"]], shuffle=False).get_train_dataset(64)
    torch.utils.data.default_collate([dataset[i] for i in range(4)])
    phase = ""
    sys.setprofile(None)
    done.set()
    thread.join(30)
    report = {
        name: {path: sorted(functions) for path, functions in sorted(files.items())} for name, files in calls.items()
    }
    print(json.dumps(report, indent=1))
    print(
        f"files: {len(set(calls['publish']) | set(calls['train']))} (publish {len(calls['publish'])}, "
        f"train {len(calls['train'])})"
    )


if __name__ == "__main__":
    main()
