"""Starting `python -m lookalike_search` as a real process for tests (port 0 + port file)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc


class SearchProcess:
    """One search-service process on a free port; `address` is HOST:PORT once `wait_ready` returned."""

    def __init__(self, data_dir: Path, engine: str = "qdrant-edge", vector_size: int = 8, **env: str):
        self.data_dir = Path(data_dir)
        self.port_file = self.data_dir / "search.port"
        self.log_path = self.data_dir / "search.log"
        self.env = {**os.environ,
                    "LOOKALIKE_SEARCH_PORT": "0",
                    "LOOKALIKE_SEARCH_PORT_FILE": str(self.port_file),
                    "LOOKALIKE_SEARCH_DATA_DIR": str(self.data_dir),
                    "LOOKALIKE_SEARCH_ENGINE": engine,
                    "LOOKALIKE_SEARCH_VECTOR_SIZE": str(vector_size),
                    "LOOKALIKE_SEARCH_SHUTDOWN_GRACE_S": "2",
                    **{k: str(v) for k, v in env.items()}}
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None

    def start(self) -> SearchProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lookalike_search"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                self.address = f"127.0.0.1:{int(self.port_file.read_text().strip())}"
                return self.address
            if self.proc.poll() is not None:
                raise RuntimeError(f"search service exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"search service not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> SearchProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.terminate()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()


def channel(address: str) -> grpc.Channel:
    ch = grpc.insecure_channel(address)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch
