"""Test and benchmark helpers: a throw-away MongoDB-protocol server (SecantusDB).

``secantusd-py`` comes with the ``test`` extra (``pip install tdphonon[test]``); it is never a
runtime dependency. Production campaigns use a real MongoDB.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Server"]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``secantusd-py`` process on a fixed port and storage path (restartable; stopped by pid)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
             str(self.root / "data"), "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError as exc:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"secantusd-py exited: {(self.root / 'server.log').read_text()[-2000:]}") \
                        from exc
                time.sleep(0.2)
        raise RuntimeError("secantusd-py did not start in 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
