"""One node per host (kogitune.hostnode): the training processes of a host start one node daemon for their home,
exactly one of them starts it, all use it, it stops once none of them is left, and a request after it died starts it
again. Real processes, a real web mirror; every wait bounded."""

import fcntl
import os
import subprocess
import sys
import time

from mirrors import mirrors

from kogitune.corpora import write_kjv_chapters
from kogitune.layout import LOG_FILE, NODE_LOCK_FILE
from kogitune.write import StoreOptions, store

TRAINER = """
import sys
from kogitune.client import DaemonClient, open_mirrors
tensor = open_mirrors([sys.argv[1]])
print(tensor.remote.daemon_home, DaemonClient().call("status")["peer_id"], flush=True)
sys.stdin.readline()  # hold on (and hold the node) until the test says
if len(sys.argv) > 2:  # the node dies; the next shard request starts it again
    DaemonClient().stop()
    tensor.remote.ensure(tensor.manifest, 0)
    print(DaemonClient().call("status")["peer_id"], flush=True)
"""


def node_stopped(home, within: float) -> bool:
    """Whether the node of `home` let go of its node lock within `within` seconds."""
    deadline = time.monotonic() + within
    with open(home / NODE_LOCK_FILE, "a+b") as lock:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.05)
    return False


def trainers(tmp_path, url, count, *extra, local_world_size=None):
    env = {**os.environ, "KOGITUNE_HOME": str(tmp_path / "home"), "LOCAL_WORLD_SIZE": str(local_world_size or count)}
    env.pop("KOGITUNE_BOOTSTRAP", None)
    return [
        subprocess.Popen(
            [sys.executable, "-c", TRAINER, url, *extra],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def tensor(tmp_path):
    corpus = write_kjv_chapters(tmp_path / "kjv.jsonl", limit=40)
    store(
        [corpus], "gpt2", tmp_path / "kjv", StoreOptions(block_size=64, shard_size=128 << 10, workers=1), progress=False
    )
    return tmp_path / "kjv"


def test_the_processes_of_a_host_start_one_node_and_it_stops_when_they_are_gone(tmp_path):
    home = tmp_path / "home"
    with mirrors(tensor(tmp_path), "ok") as urls:
        procs = trainers(tmp_path, urls[0], 3)
        try:
            lines = [proc.stdout.readline().split() for proc in procs]
            assert {line[0] for line in lines} == {str(home)}  # each one's shards go through the node
            assert len({line[1] for line in lines}) == 1  # one node
            assert (home / LOG_FILE).read_text().count(" started ") == 1
            assert not node_stopped(home, 0.5)
        finally:
            for proc in procs:
                proc.communicate("\n", timeout=60)
    assert node_stopped(home, 20)


def test_a_request_after_the_node_died_starts_it_again(tmp_path):
    home = tmp_path / "home"
    with mirrors(tensor(tmp_path), "ok") as urls:
        (proc,) = trainers(tmp_path, urls[0], 1, "stop", local_world_size=2)
        try:
            first = proc.stdout.readline().split()[1]
            out, _ = proc.communicate("\n", timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0
        assert out.split() == [first]  # the same identity (its home's key), a new process
        assert (home / LOG_FILE).read_text().count(" started ") == 2
    assert node_stopped(home, 20)
