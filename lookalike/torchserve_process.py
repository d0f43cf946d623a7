"""Running TorchServe with the Lookalike embedder (dev, tests, benches, `lookalike serve`).

`TorchServeProcess` starts a real TorchServe (Java frontend + Python worker) for one model store
and data directory, on its own ports, and stops it completely (no java left behind).
`client()` gives a lookalike.embedder_client.EmbedderClient for it (the token set).

    with TorchServeProcess(model_store, data_dir) as ts:        # waits until the model is READY
        client = ts.client()
        vec = client.embed(jpeg_bytes, timeout=10)               # float32 [1280], L2 norm 1
        results = client.embed_many([a, b, c], timeout=30)      # ndarray or Exception per item

TorchServe 0.12 facts this module relies on (checked against its jar and Python launcher):

* Token authorization is on by default. TorchServe writes ``key_file.json`` into its *working
  directory* (we start it with cwd = data_dir). gRPC inference expects metadata
  ``authorization: Bearer <inference key>``; without it every RPC, Ping included, fails with
  PERMISSION_DENIED ("Token Authorization failed..."). Keys expire after ``token_expiration_min``
  (default 60; our config sets one year).
* The ``torchserve`` launcher keeps its pid file in ``$TMPDIR/.model_server.pid`` and refuses to
  start a second server with the same TMPDIR; the Java frontend puts worker sockets
  (``.ts.sock.<port>``) and unpacked archives under ``java.io.tmpdir`` (from ``$TEMP``), and
  torch-model-archiver stages in ``$TMPDIR/<model>``. We give every run a private TMPDIR/TEMP.
* ``torchserve --foreground`` does not forward SIGTERM to java; ``torchserve --stop`` only knows the
  one pid file. We start it in a new session and stop it by SIGTERM to java, then SIGKILL to the
  whole process group, and check that nothing of the group is left.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

from lookalike import priority, process_group, torchserve_config, torchserve_logs
from lookalike.embedder_client import MODEL_NAME, EmbedderClient, read_key_file
from lookalike.ports import free_port


class TorchServeError(RuntimeError):
    """TorchServe failed to start, to load the model, or to stop."""


class TorchServeProcess:
    """A TorchServe server (launcher + java + Python workers) owned by this object.

    `model_store`: a directory holding <model_name>.mar (the default version) and the archives of
    other versions, <model_name>.<version>.mar (build_mar.py --model-version / --preset / --onnx); TorchServe
    registers every one of them (the default first, so it stays the default version), or only the
    archive file named by `archive`. When `model_store` is None, the embedder archive is built
    (or reused if up to date) in <data_dir>/model-store with build_mar.py and `mar_options`
    (cut, batch_size, max_batch_delay, workers). Ports given as 0 are picked free. The inference
    endpoints (gRPC, REST) bind `inference_host` (127.0.0.1 by default; "0.0.0.0" to publish);
    management, gRPC management and metrics always bind 127.0.0.1. The metrics API is on, in
    Prometheus mode, with the metrics of services/embedder/metrics.yaml (`metrics_url` + "/metrics",
    or `metrics_text()`). `properties` are extra
    config.properties entries (None removes one); `env` extra environment for java and the worker
    (e.g. LOOKALIKE_EMBEDDER_CUT, LOOKALIKE_EMBEDDER_THREADS). `nice` > 0 runs the whole server at that
    lower CPU priority, its autogroup too (lookalike.priority).
    Everything the run writes is under `data_dir`: config.properties, key_file.json,
    logs/ (ts_log.log, model_log.log, access_log.log, torchserve.out), tmp/ (sockets, unpacked mar).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        model_store: str | os.PathLike | None = None,
        *,
        model_name: str = MODEL_NAME,
        archive: str | None = None,
        mar_options: Mapping[str, object] | None = None,
        grpc_port: int = 0,
        http_port: int = 0,
        management_port: int = 0,
        metrics_port: int = 0,
        grpc_management_port: int = 0,
        inference_host: str = "127.0.0.1",
        config_template: str | os.PathLike | None = None,
        properties: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        java_home: str | None = None,
        startup_timeout: float = 180.0,
        nice: int = 0,
    ):
        self.data_dir = Path(data_dir).resolve()
        self._build_mar = model_store is None
        self.model_store = Path(model_store).resolve() if model_store is not None else self.data_dir / "model-store"
        self.mar_options = dict(mar_options or {})
        self.model_name = model_name
        self.archive = archive
        self.inference_host = inference_host
        self.config_template = Path(config_template) if config_template else torchserve_config.default_config_template()
        self.extra_properties = dict(properties or {})
        self.extra_env = dict(env or {})
        self.python = python or sys.executable
        self.java_home = java_home
        self.startup_timeout = float(startup_timeout)
        self.nice = priority.check_nice(nice)  # > 0: the whole server at a lower CPU priority
        self.ports = {"grpc": grpc_port, "http": http_port, "management": management_port,
                      "metrics": metrics_port, "grpc_management": grpc_management_port}
        self.log_dir = self.data_dir / "logs"
        self.tmp_dir = self.data_dir / "tmp"
        self.config_path = self.data_dir / "config.properties"
        self.key_file = self.data_dir / "key_file.json"
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None
        self._out = None

    # ------------------------------------------------------------------ addresses and keys
    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC inference API, for grpc.insecure_channel."""
        return f"{self._connect_host()}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        """Base URL of the REST inference API (POST /predictions/<model>)."""
        return f"http://{self._connect_host()}:{self.ports['http']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def inference_key(self) -> str:
        """Token for the inference APIs (gRPC metadata `authorization: Bearer <key>`)."""
        return self._key("inference")

    @property
    def management_key(self) -> str:
        return self._key("management")

    @property
    def grpc_inference_port(self) -> int:
        return self.ports["grpc"]

    @property
    def management_port(self) -> int:
        return self.ports["management"]

    @property
    def pid(self) -> int | None:
        """Pid of the torchserve launcher (also the process group id of the whole server)."""
        return self.proc.pid if self.proc else None

    def _connect_host(self) -> str:
        return "127.0.0.1" if self.inference_host in ("0.0.0.0", "", "::") else self.inference_host

    def _key(self, name: str) -> str:
        if name not in self.keys:
            if not self.key_file.is_file():
                raise TorchServeError(f"{self.key_file} does not exist (is TorchServe started?)")
            self.keys = read_key_file(self.key_file)
        return self.keys[name]

    # ------------------------------------------------------------------ start
    def _pick_ports(self) -> None:
        taken = set()
        for name, port in self.ports.items():
            if not port:
                while True:
                    port = free_port()
                    if port not in taken:
                        break
            taken.add(port)
            self.ports[name] = int(port)

    def archives(self) -> list[str]:
        """The archive files TorchServe loads: `archive` when named, else <model_name>.mar first (the
        default version), then every <model_name>.<version>.mar in the store, sorted."""
        return [self.archive] if self.archive else torchserve_config.archives(self.model_store, self.model_name)

    def write_config(self) -> Path:
        """Writes the per-run config.properties (ports, store, addresses) and returns its path."""
        overrides = torchserve_config.run_properties(ports=self.ports, inference_host=self.inference_host,
                                                     model_store=self.model_store, load_models=self.archives())
        overrides.update(self.extra_properties)
        self.config_path.write_text(torchserve_config.render_properties(self.config_template, overrides))
        return self.config_path

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in list(env):
            if var.startswith("TS_"):  # TS_* env vars override config.properties in TorchServe
                env.pop(var)
        bin_dir = str(Path(self.python).parent)
        env.update({
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),  # `python` = the venv's python
            "TMPDIR": str(self.tmp_dir), "TEMP": str(self.tmp_dir), "TMP": str(self.tmp_dir),
            "LOG_LOCATION": str(self.log_dir), "METRICS_LOCATION": str(self.log_dir),
            "TS_CONFIG_FILE": str(self.config_path),
            "PYTHONUNBUFFERED": "1",
        })
        # libgomp's default busy-waiting makes multi-threaded torch collapse (10x slower) when the
        # cores are shared with other processes; must be set before the worker imports torch.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.java_home:
            env["JAVA_HOME"] = self.java_home
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True, timeout: float | None = None) -> "TorchServeProcess":
        """Starts TorchServe; with wait=True (default) returns once the model's worker is READY
        (within `timeout` seconds, default startup_timeout); on failure everything is stopped."""
        if self.proc is not None:
            raise TorchServeError("already started")
        if self._build_mar:
            torchserve_config.build_embedder_mar(self.model_store, **self.mar_options)
        first = self.archives()[0]
        if not (self.model_store / first).exists():
            raise TorchServeError(f"{self.model_store / first} not found; "
                                  "build it with services/embedder/build_mar.py")
        for d in (self.data_dir, self.log_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        sock_probe = self.tmp_dir / ".ts.sock.65535"
        if len(str(sock_probe)) > 100:
            raise TorchServeError(f"data_dir path too long for unix sockets ({len(str(sock_probe))} > 100 chars): "
                                  f"{self.data_dir}")
        requested = dict(self.ports)
        for attempt in (1, 2):
            self._launch()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except BaseException as exc:
                self.stop()
                self.proc = None
                clash = isinstance(exc, TorchServeError) and "Address already in use" in str(exc)
                if attempt == 1 and clash and 0 in requested.values():
                    # a port picked free was taken by someone else before java bound it: re-pick
                    self.ports = dict(requested)
                    continue
                raise
        return self

    def restart(self, timeout: float | None = None) -> "TorchServeProcess":
        """Stops and starts again on the same ports (TorchServe writes a new key_file.json, so clients
        holding the old inference key must re-read it: EmbedderClient(token_file=...) does)."""
        self.stop()
        self.proc = None
        return self.start(timeout=timeout)

    def _launch(self) -> None:
        self.key_file.unlink(missing_ok=True)
        self.keys = {}
        (self.tmp_dir / ".model_server.pid").unlink(missing_ok=True)
        self._pick_ports()
        self.write_config()
        cmd = [self.python, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
               "--model-store", str(self.model_store), "--ts-config", str(self.config_path)]
        cmd = priority.niced(cmd, self.nice)  # java and its workers inherit it
        self._out = open(self.log_dir / "torchserve.out", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=self._environment(), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        if self.nice:  # its own session: with autogroup scheduling only the session's nice ranks it
            priority.set_autogroup_nice(self.proc.pid, self.nice)

    def management_get(self, path: str, timeout: float = 5.0):
        """GET on the management API (loopback, with the management token); the decoded JSON."""
        request = urllib.request.Request(self.management_url + path,
                                         headers={"Authorization": f"Bearer {self.management_key}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def metrics_text(self, timeout: float = 5.0) -> str:
        """The metrics API's Prometheus text (GET <metrics_url>/metrics; loopback, no token)."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=timeout) as response:
            return response.read().decode("utf-8")

    def describe_model(self, timeout: float = 5.0) -> dict:
        """Management API GET /models/<model> (first version): workers, batchSize, maxBatchDelay..."""
        data = self.management_get(f"/models/{self.model_name}", timeout)
        return data[0] if isinstance(data, list) else data

    def wait_ready(self, timeout: float | None = None, cancel: threading.Event | None = None) -> float:
        """Blocks until the model has a READY worker; returns the seconds since start.

        Raises TorchServeError (with the tail of the logs) if TorchServe exits or the timeout passes, or
        at once when `cancel` is set (a supervisor stopping while TorchServe restarts).
        """
        if self.proc is None:
            raise TorchServeError("not started")
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        last = "no answer yet"
        while True:
            if cancel is not None and cancel.is_set():
                raise TorchServeError("start-up cancelled")
            code = self.proc.poll()
            if code is not None:
                raise TorchServeError(f"TorchServe exited with code {code} during start-up\n{self.log_tail()}")
            if self.key_file.is_file():
                try:
                    self.keys = read_key_file(self.key_file)
                    info = self.describe_model(timeout=2.0)
                    statuses = [w.get("status") for w in info.get("workers", [])]
                    if "READY" in statuses:
                        self.ready_after_s = time.monotonic() - self.started_at
                        return self.ready_after_s
                    last = f"workers: {statuses or 'none'}"
                except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TorchServeError(f"TorchServe model {self.model_name!r} not ready after "
                                      f"{time.monotonic() - self.started_at:.0f}s ({last})\n{self.log_tail()}")
            time.sleep(0.25)

    # ------------------------------------------------------------------ stop
    def _group_alive(self) -> bool:
        return self.proc is not None and process_group.group_alive(self.proc.pid)

    def group_pids(self) -> list[int]:
        """Pids of every live process of this server (launcher, java, workers)."""
        return process_group.group_pids(self.proc.pid) if self.proc is not None else []

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the server and every process it started; idempotent.

        SIGTERM to java (it unregisters the model and stops its workers), then, after `timeout`
        or once the launcher has exited, SIGKILL to whatever is left in the process group.
        """
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None or self._group_alive():
                for pid in self._java_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self.group_pids():
                    if self.proc.poll() is not None and not self._java_pids():
                        break  # launcher and java gone: only workers left (if any), kill below
                    time.sleep(0.1)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while self.group_pids() and time.monotonic() < deadline:
                    time.sleep(0.05)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            left = self.group_pids()
            if left:
                raise TorchServeError(f"TorchServe processes still alive after stop: {left}")
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None

    def _java_pids(self) -> list[int]:
        return [pid for pid in self.group_pids()
                if (argv := process_group.command_line(pid)) and argv[0].endswith(b"java")
                and b"org.pytorch.serve.ModelServer" in argv]

    # ------------------------------------------------------------------ misc
    def log_tail(self, lines: int = 40) -> str:
        """The last lines of torchserve.out, ts_log.log and model_log.log (for error messages)."""
        return torchserve_logs.log_tail(self.log_dir, lines)

    def inference_count(self, settle_s: float = 0.3) -> int:
        """Images embedded by the model so far (lookalike.torchserve_logs.inference_count)."""
        return torchserve_logs.inference_count(self.log_dir, settle_s)

    def client(self, **kwargs) -> EmbedderClient:
        """An EmbedderClient for this server (token set)."""
        kwargs.setdefault("model_name", self.model_name)
        return EmbedderClient(self.grpc_target, token=self.inference_key, **kwargs)

    def __enter__(self) -> "TorchServeProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TorchServeProcess(pid={self.pid}, grpc={self.grpc_target}, data_dir={str(self.data_dir)!r})"


__all__ = ["TorchServeError", "TorchServeProcess"]
