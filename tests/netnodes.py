"""Kogitune nodes as real OS processes on 127.0.0.1, for the network tests."""

import os
import signal
import subprocess
import sys
from pathlib import Path

KOGITUNE = str(Path(sys.executable).with_name("kogitune"))
ENV = {**os.environ, "KOGITUNE_READ_TIMEOUT": "3"}


class NodeProcess:
    """`kogitune node start` in its own home; the ready line gives its peer ID and address."""

    def __init__(
        self,
        home: Path,
        bootstrap: list[str] = (),
        env: dict | None = None,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        flags: list[str] = (),
    ) -> None:
        self.home = Path(home)
        self.env = env or ENV
        args = [KOGITUNE, "node", "start", "--home", str(self.home), "--listen", listen, *flags]
        for address in bootstrap:
            args += ["--bootstrap", address]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        line = self.proc.stdout.readline().split()
        assert line[:2] == ["kogitune", "node"], f"node in {home} did not start: {line}"
        self.peer_id, self.address = line[2], line[-1]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [KOGITUNE, *args, "--home", str(self.home)], capture_output=True, text=True, timeout=120, env=self.env
        )
        if check and result.returncode:
            raise AssertionError(f"kogitune {' '.join(args)} failed: {result.stderr}")
        return result

    def data_port(self) -> int:
        """The port of the node's data port (node/dataport.py), from `kogitune node status`."""
        line = next(x for x in self.cli("node", "status").stdout.splitlines() if x.startswith("data port"))
        return int(line.split()[2])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
