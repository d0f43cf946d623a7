"""Runs the whole chain as local processes: redis-server, TorchServe, search service, gateway.

Used by `lookalike serve` and by the end-to-end tests. Every child runs in its own process group and
is stopped (SIGTERM, then SIGKILL) when the stack stops. With `StackConfig.supervise` (what `lookalike serve`
uses) a child that exits is started again on the same ports (lookalike.supervisor); the gateway re-reads
TorchServe's new key file by itself, so nothing else has to change.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lookalike import priority, stack_status
from lookalike.supervisor import Child, Supervisor, describe_exit
from lookalike.ports import GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT, free_port
from lookalike.torchserve_process import TorchServeProcess
from lookalike_search.settings import default_engine

log = logging.getLogger(__name__)


#: util-linux's setpriv (Debian: always there) sets the parent-death signal and execs the command, so the
#: child needs no preexec_fn: a Python preexec_fn makes subprocess fork() instead of vfork(), which runs
#: gRPC's fork handlers in the child; a parent using gRPC (the tests, `lookalike serve --index`) then saw
#: children abort before exec ("Epoll1Poller ... epoll_wait error: Bad file descriptor", SIGABRT).
SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so a killed supervisor leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _call(function) -> None:
    function()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A child process with a log file, stopped by SIGTERM to its process group (SIGKILL after `grace`)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # SIGTERM when the parent dies, so a killed supervisor leaves no orphans
            argv = [SETPRIV, "--pdeathsig", "SIGTERM", "--", *self.argv] if SETPRIV else self.argv
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True,
                                         preexec_fn=None if SETPRIV else _die_with_parent)
        log.info("started %s (pid %d), log %s", self.name, self.proc.pid, self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise RuntimeError(f"{self.name} exited (code {code}); last log lines:\n{_tail(self.log_path, 5)}\n"
                               f"(full log: {self.log_path})")

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 15.0) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs: killing", self.name, grace)
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL, no drain (crash tests)."""
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)


def wait_for_port_file(path: Path, process: ManagedProcess, timeout: float) -> dict[str, int]:
    """Waits until a service wrote its `key=port` lines (or a bare port) to `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        if path.exists():
            text = path.read_text().strip()
            if text:
                if "=" not in text:
                    return {"port": int(text)}
                return {k: int(v) for k, v in (line.split("=", 1) for line in text.splitlines())}
        time.sleep(0.1)
    raise TimeoutError(f"{process.name} did not report its port within {timeout:.0f}s; log:\n"
                       f"{_tail(process.log_path)}")


@dataclass
class StackConfig:
    """Where the stack keeps its state and which ports the gateway takes (0 = any free port)."""
    data_dir: Path = Path("var")
    http_port: int = GATEWAY_HTTP_PORT
    grpc_port: int = GATEWAY_GRPC_PORT
    host: str = "127.0.0.1"
    search_engine: str = ""  # "" = the search service's default (lookalike_search.settings.default_engine)
    api_keys: str = ""
    extra_gateway_env: dict = field(default_factory=dict)
    extra_search_env: dict = field(default_factory=dict)
    startup_timeout_s: float = 240.0
    # TorchServe's CPU priority (lookalike.priority): None = LOOKALIKE_EMBEDDER_NICE (default 0, the same
    # priority); > 0 puts cache hits (gateway, search, Redis) ahead of embedding work.
    embedder_nice: int | None = None
    supervise: bool = False  # restart children that exit (lookalike serve); tests that kill children on purpose leave it off


class Stack:
    """The whole chain on one machine. `start()` returns once the gateway's /healthz is 200."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.data_dir = Path(config.data_dir).resolve()
        self.logs = self.data_dir / "logs"
        self.search_engine = config.search_engine or default_engine(self.data_dir / "search")
        # checked before anything starts: a bad LOOKALIKE_EMBEDDER_NICE stops the stack naming it
        self.embedder_nice = (priority.embedder_nice() if config.embedder_nice is None
                              else priority.check_nice(config.embedder_nice))
        self.redis: ManagedProcess | None = None
        self.torchserve: TorchServeProcess | None = None
        self.search: ManagedProcess | None = None
        self.gateway: ManagedProcess | None = None
        self.redis_port = 0
        self.search_port = 0
        self.grpc_port = 0
        self.http_port = 0
        self.status_path = self.data_dir / stack_status.FILE_NAME
        self.supervisor: Supervisor | None = None
        self._stopping = threading.Event()
        self._launching = threading.Lock()  # a restart's launch and stop() never interleave

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    def _python_env(self, extra: dict) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
        env.update({k: str(v) for k, v in extra.items()})
        env["PYTHONUNBUFFERED"] = "1"
        # Busy-waiting OpenMP threads slow everything ~10x when the cores are shared by several services.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def start_redis(self) -> None:
        server = shutil.which("redis-server")
        if not server:
            raise RuntimeError("redis-server not found: install it (Debian: apt-get install redis-server)")
        self.redis_port = free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        # A cache: no persistence, bounded memory, LRU eviction, loopback only.
        self.redis = ManagedProcess("redis-server", [
            server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(redis_dir),
            "--protected-mode", "yes"], self.logs / "redis.log")
        self.redis.start()
        self._wait_redis()

    def restart_redis(self) -> None:
        """Starts redis-server again after a stop or kill, on the same port (an empty cache)."""
        self.redis.start()
        self._wait_redis()

    def _wait_redis(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.redis.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("redis-server did not answer PING within 20s")

    def start_torchserve(self) -> None:
        self.torchserve = TorchServeProcess(self.data_dir / "torchserve", nice=self.embedder_nice)
        self.torchserve.start(timeout=self.config.startup_timeout_s)

    def start_search(self) -> None:
        port_file = self.data_dir / "search.port"
        port_file.unlink(missing_ok=True)
        env = self._python_env({
            "LOOKALIKE_SEARCH_HOST": "127.0.0.1", "LOOKALIKE_SEARCH_PORT": 0,
            "LOOKALIKE_SEARCH_PORT_FILE": port_file, "LOOKALIKE_SEARCH_ENGINE": self.search_engine,
            "LOOKALIKE_SEARCH_DATA_DIR": self.data_dir / "search", **self.config.extra_search_env})
        self.search = ManagedProcess("search service", [sys.executable, "-m", "lookalike_search"],
                                     self.logs / "search.log", env=env)
        self.search.start()
        self.search_port = wait_for_port_file(port_file, self.search, self.config.startup_timeout_s)["port"]

    def restart_search(self, launch=None) -> None:
        """Starts the search service again after a stop or kill, on the port it had (the gateway keeps
        its address); returns once it is ready. `launch(start)` runs the start (the supervisor's guard)."""
        port_file = self.data_dir / "search.port"
        port_file.unlink(missing_ok=True)
        self.search.env["LOOKALIKE_SEARCH_PORT"] = str(self.search_port)
        (launch or _call)(self.search.start)
        wait_for_port_file(port_file, self.search, self.config.startup_timeout_s)

    def gateway_env(self) -> dict:
        return self._python_env({
            "LOOKALIKE_GATEWAY_HOST": self.config.host,
            "LOOKALIKE_GATEWAY_GRPC_PORT": self.config.grpc_port,
            "LOOKALIKE_GATEWAY_HTTP_PORT": self.config.http_port,
            "LOOKALIKE_GATEWAY_PORT_FILE": self.data_dir / "gateway.port",
            "LOOKALIKE_GATEWAY_EMBEDDER_ADDRESS": f"127.0.0.1:{self.torchserve.grpc_inference_port}",
            "LOOKALIKE_GATEWAY_EMBEDDER_TOKEN_FILE": self.torchserve.key_file,
            # everything is on this machine: the gateway's /metrics re-exports TorchServe's (loopback) metrics
            "LOOKALIKE_GATEWAY_EMBEDDER_METRICS_URL": f"{self.torchserve.metrics_url}/metrics",
            "LOOKALIKE_GATEWAY_SEARCH_ADDRESS": f"127.0.0.1:{self.search_port}",
            "LOOKALIKE_GATEWAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "LOOKALIKE_GATEWAY_DATA_DIR": self.data_dir / "gateway",
            "LOOKALIKE_GATEWAY_API_KEYS": self.config.api_keys,
            **({"LOOKALIKE_GATEWAY_STACK_STATUS_FILE": self.status_path} if self.config.supervise else {}),
            **self.config.extra_gateway_env})

    def start_gateway(self) -> None:
        port_file = self.data_dir / "gateway.port"
        port_file.unlink(missing_ok=True)
        self.gateway = ManagedProcess("gateway", [sys.executable, "-m", "lookalike_gateway"],
                                      self.logs / "gateway.log", env=self.gateway_env())
        self.gateway.start()
        ports = wait_for_port_file(port_file, self.gateway, 60)
        self.grpc_port, self.http_port = ports["grpc"], ports["http"]

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.gateway.check_alive()
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"gateway not healthy within {timeout:.0f}s: {last}")

    def start(self) -> "Stack":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)  # a previous run's
        self._stopping.clear()
        try:
            self.start_redis()
            self.start_search()
            self.start_torchserve()
            self.start_gateway()
            self.wait_healthy(60)
        except BaseException:
            self.stop()
            raise
        if self.config.supervise:
            self.supervisor = Supervisor(self.children(), self.status_path, self._stopping).start()
        return self

    def stop(self) -> None:
        """Stops the gateway first (drain), then the backends; a restart in progress is abandoned."""
        self._stopping.set()
        with self._launching:  # from here on no restart launches anything
            pass
        for process in (self.gateway, self.search):
            if process:
                process.stop()
        if self.torchserve:
            self.torchserve.stop()
        if self.redis:
            self.redis.stop()
        if self.supervisor:
            self.supervisor.join(30)

    # ---- supervision --------------------------------------------------------------------------------

    def children(self) -> list[Child]:
        """The four children as the supervisor sees them; each restarts on the ports it had."""
        def managed(process: ManagedProcess, restart) -> Child:
            return Child(process.name, process.alive, lambda: describe_exit(process.proc.returncode),
                         lambda: _tail(process.log_path, 20), lambda: process.proc.pid if process.proc else None,
                         restart)

        ts = self.torchserve
        return [
            managed(self.redis, lambda stopping: self._relaunch(self.redis.start) and self._wait_redis()),
            managed(self.search, lambda stopping: self.restart_search(self._relaunch)),
            Child("torchserve", lambda: ts.proc is not None and ts.proc.poll() is None,
                  lambda: f"launcher {describe_exit(ts.proc.returncode if ts.proc else None)}, java gone",
                  lambda: ts.log_tail(10), lambda: ts.pid, self._restart_torchserve),
            managed(self.gateway, lambda stopping: self.restart_gateway(self._relaunch)),
        ]

    def _relaunch(self, launch) -> bool:
        """Runs `launch` unless the stack is stopping (then raises, so the supervisor gives up)."""
        with self._launching:
            if self._stopping.is_set():
                raise RuntimeError("the stack is stopping")
            launch()
        return True

    def _restart_torchserve(self, stopping: threading.Event) -> None:
        ts = self.torchserve
        ts.stop()  # what is left of the old server (its workers); same ports, a new key file
        ts.proc = None
        self._relaunch(lambda: ts.start(wait=False))
        ts.wait_ready(self.config.startup_timeout_s, cancel=stopping)

    def restart_gateway(self, launch=None) -> None:
        """Starts the gateway again on the ports it had (clients keep their address)."""
        port_file = self.data_dir / "gateway.port"
        port_file.unlink(missing_ok=True)
        self.gateway.env.update({"LOOKALIKE_GATEWAY_GRPC_PORT": str(self.grpc_port),
                                 "LOOKALIKE_GATEWAY_HTTP_PORT": str(self.http_port)})
        (launch or _call)(self.gateway.start)
        wait_for_port_file(port_file, self.gateway, 60)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
