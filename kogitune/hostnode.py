"""One node per host: the training processes of a host share one node daemon and one store, and name their job.

Who starts it. A training process that opens a remote dataset uses the node daemon of its home when one runs
(kogitune.client). When none runs and the setting `host_node` asks for one (1, the default: under torchrun with
more than one process on the host, LOCAL_WORLD_SIZE > 1; 2: always; 0: never), the first process to take
`<home>/host-node.lock` starts `kogitune node start --until-unused` for the home (a server-mode node: it serves what
the host holds to the job's other hosts); the others wait on that lock (at most HOST_NODE_START_SECONDS) and find
it running. All of them, their DataLoader workers included, then reach it over its control socket: one node, one
store, one fetch per shard for the whole host.

How long it lives. Each process that uses such a node holds a shared lock on `<home>/node.users` for as long as it
lives (the kernel drops it however the process ends); `--until-unused` makes the node stop once nobody holds it
(node/service.py), so a job leaves no daemon behind. A daemon started by hand (`kogitune node start`) is used as it
is and never stopped by a trainer.

When it dies. The next request of a process that started it or attached to it (RemoteShards, kogitune.client)
starts it again (the same lock decides who) and is sent again once; if it cannot start, the error says why and
where its log is. Turn it off with `host_node` 0 (`KOGITUNE_HOST_NODE=0`): each process then runs its own
embedded client-mode node, as before.

The job. `job_of_environment` names the training job the same on all its hosts: `$KOGITUNE_JOB` when set, else
"MASTER_ADDR:MASTER_PORT/TORCHELASTIC_RUN_ID" as torchrun sets them, else None (no job). The host's node uses it to
find the job's other hosts (node/jobs.py).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .errors import NodeError
from .layout import HOST_NODE_LOCK_FILE, LOG_FILE, NODE_USERS_FILE
from .settings import settings

HOST_NODE_START_SECONDS = 60.0
"""How long a process waits for the host's node to be started (by itself or by another process of the host)."""
LOCK_POLL_SECONDS = 0.05
HOST_NODE_LISTEN = "/ip4/0.0.0.0/tcp/0"
"""Where a node started for a host listens: any free port (two homes on one host must not collide), every
interface (the job's other hosts dial it)."""
_users: dict[Path, int] = {}
"""home -> the open file holding this process's shared lock on its node.users (kept until the process exits)."""


def job_of_environment(env=os.environ) -> str | None:
    """The name of this process's training job (see the module docstring), or None outside a job."""
    if env.get("KOGITUNE_JOB"):
        return env["KOGITUNE_JOB"]
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        return f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}/{env.get('TORCHELASTIC_RUN_ID', '')}"
    return None


def wanted(env=os.environ) -> bool:
    """Whether this process should start (or attach to) a node for its host: the setting host_node."""
    mode = settings().host_node
    if mode >= 2:
        return True
    return mode == 1 and int(env.get("LOCAL_WORLD_SIZE") or 1) > 1


def start_for(home: Path, running) -> bool:
    """Make sure the node daemon of `home` runs, starting it if this process is the first of the host to ask;
    `running()` says whether it answers. False when host_node does not want one (nothing is started)."""
    if not wanted():
        return False
    _hold_users_lock(home)
    if running():
        return True
    with _locked(home / HOST_NODE_LOCK_FILE, fcntl.LOCK_EX):
        if running():
            return True
        from kogitune.node.service import start_detached

        argv = ["node", "start", "--home", str(home), "--listen", HOST_NODE_LISTEN, "--until-unused"]
        try:
            start_detached(home, argv)
        except NodeError as exc:
            raise NodeError(
                f"{exc} (starting the node of this host for {home}; KOGITUNE_HOST_NODE=0 turns it off)"
            ) from None
    return True


def _hold_users_lock(home: Path) -> None:
    """Take (once per process) a shared lock on node.users, kept while this process lives: the node started with
    --until-unused stops when no process holds one. Waits while a node that found itself unused is stopping."""
    if home in _users:
        return
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / NODE_USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    _wait_for_lock(fd, fcntl.LOCK_SH, home / NODE_USERS_FILE)
    _users[home] = fd


class _locked:
    def __init__(self, path: Path, kind: int) -> None:
        self.path, self.kind = path, kind

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        _wait_for_lock(self.fd, self.kind, self.path)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _wait_for_lock(fd: int, kind: int, path: Path) -> None:
    deadline = time.monotonic() + HOST_NODE_START_SECONDS
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise NodeError(
                    f"waited {HOST_NODE_START_SECONDS:.0f} s for {path} (the node of this host is being started or "
                    f"stopped by another process); see {path.parent / LOG_FILE}"
                ) from None
            time.sleep(LOCK_POLL_SECONDS)
