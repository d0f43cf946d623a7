"""Running TorchServe with the Lookalike embedder, and talking to it over gRPC.

`TorchServeProcess` starts a real TorchServe (Java frontend + Python worker) for one model store
and data directory, on its own ports, and stops it completely (no java left behind).
`EmbedderClient` calls the embedder over TorchServe's gRPC inference API.

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
* Per-item errors inside a batch cannot be signalled with a gRPC status (the gRPC frontend drops
  per-item status codes; an exception in the handler fails the whole batch), so the handler returns
  a JSON error document as that item's ``prediction``; see lookalike_embedder.handler.
* gRPC metadata is not forwarded to the handler; the request id travels as the input "request_id".
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
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

import grpc
import numpy as np
from google.protobuf import empty_pb2

from lookalike.torchserve_api import inference_pb2, inference_pb2_grpc
from lookalike.vectors import unpack

#: Model name registered by the embedder archive (= lookalike_embedder.model.MODEL_NAME).
MODEL_NAME = "lookalike-lite0"
#: Bytes that start a per-item error payload (= lookalike_embedder.handler.ERROR_PREFIX).
ERROR_PREFIX = b'{"error"'
#: Channel options: reconnect within ~1 s once TorchServe is back (gRPC's default backoff grows to
#: 120 s, which would keep a restarted embedder "down" long after it returned).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 1000)]
#: Default ports of the shipped config (services/embedder/config.properties).
DEFAULT_PORTS = {"grpc": 7070, "grpc_management": 7071, "http": 8085, "management": 8081, "metrics": 8082}

_REPO_ROOT = Path(__file__).resolve().parents[1]


# =============================================================================== helpers

def embedder_dir() -> Path:
    """services/embedder of this checkout (holds config.properties, build_mar.py, Dockerfile)."""
    path = _REPO_ROOT / "services" / "embedder"
    if not (path / "config.properties").is_file():
        raise FileNotFoundError(f"{path} not found: TorchServeProcess needs the repository checkout "
                                "(services/embedder), not just the installed package")
    return path


def default_config_template() -> Path:
    """The shipped TorchServe config: services/embedder/config.properties."""
    return embedder_dir() / "config.properties"


def default_metrics_config() -> Path:
    """The shipped TorchServe metrics declaration: services/embedder/metrics.yaml."""
    return embedder_dir() / "metrics.yaml"


def build_embedder_mar(model_store: str | os.PathLike, **kwargs) -> Path:
    """Builds (or reuses) <model_store>/lookalike-lite0.mar with services/embedder/build_mar.py.

    kwargs: cut, batch_size, max_batch_delay, workers, serialized_file, force, quiet.
    """
    script = embedder_dir() / "build_mar.py"
    spec = importlib.util.spec_from_file_location("_lookalike_build_mar", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kwargs.setdefault("quiet", True)
    return module.build_mar(model_store, **kwargs)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """Java-style key=value file (comments and blank lines skipped; no line continuations)."""
    props: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def render_properties(template: str | os.PathLike, overrides: Mapping[str, object]) -> str:
    """The template file with `overrides` applied (existing keys replaced in place, new keys appended;
    a value of None removes the key)."""
    lines, seen = [], set()
    for line in Path(template).read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key = stripped.split("=", 1)[0].strip()
            if key in overrides:
                seen.add(key)
                if overrides[key] is None:
                    continue
                line = f"{key}={overrides[key]}"
        lines.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen and v is not None]
    if extra:
        lines += ["", "# per-run overrides (lookalike.torchserve.TorchServeProcess)"] + extra
    return "\n".join(lines) + "\n"


def allowed_urls_property(model_store: str | os.PathLike) -> str:
    """config.properties value of `allowed_urls` admitting only archives directly inside `model_store`
    (a Java regex; backslashes doubled for the properties file)."""
    pattern = "file://" + re.escape(str(model_store)) + "/[^/]+\\.mar"
    return pattern.replace("\\", "\\\\")


def read_key_file(path: str | os.PathLike) -> dict[str, str]:
    """{"inference": key, "management": key, "API": key} from TorchServe's key_file.json."""
    data = json.loads(Path(path).read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


class TorchServeError(RuntimeError):
    """TorchServe failed to start, to load the model, or to stop."""


# =============================================================================== process

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
    (e.g. LOOKALIKE_EMBEDDER_CUT, LOOKALIKE_EMBEDDER_THREADS).
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
    ):
        self.data_dir = Path(data_dir).resolve()
        self._build_mar = model_store is None
        self.model_store = Path(model_store).resolve() if model_store is not None else self.data_dir / "model-store"
        self.mar_options = dict(mar_options or {})
        self.model_name = model_name
        self.archive = archive
        self.inference_host = inference_host
        self.config_template = Path(config_template) if config_template else default_config_template()
        self.extra_properties = dict(properties or {})
        self.extra_env = dict(env or {})
        self.python = python or sys.executable
        self.java_home = java_home
        self.startup_timeout = float(startup_timeout)
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
    def http_inference_port(self) -> int:
        return self.ports["http"]

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
        default version: TorchServe makes the first version it registers the default), then every
        <model_name>.<version>.mar in the store, sorted."""
        if self.archive:
            return [self.archive]
        others = sorted(p.name for p in self.model_store.glob(f"{self.model_name}.*.mar"))
        return [f"{self.model_name}.mar", *others]

    def write_config(self) -> Path:
        """Writes the per-run config.properties (ports, store, addresses) and returns its path."""
        overrides: dict[str, object] = {
            "inference_address": f"http://{self.inference_host}:{self.ports['http']}",
            "management_address": f"http://127.0.0.1:{self.ports['management']}",
            "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
            "enable_metrics_api": "true",
            "metrics_mode": "prometheus",
            "metrics_config": str(default_metrics_config()),
            "grpc_inference_address": self.inference_host,
            "grpc_inference_port": self.ports["grpc"],
            "grpc_management_address": "127.0.0.1",
            "grpc_management_port": self.ports["grpc_management"],
            "model_store": str(self.model_store),
            "load_models": ",".join(self.archives()),
            "allowed_urls": allowed_urls_property(self.model_store),
        }
        overrides.update(self.extra_properties)
        self.config_path.write_text(render_properties(self.config_template, overrides))
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
            build_embedder_mar(self.model_store, **self.mar_options)
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
        self._out = open(self.log_dir / "torchserve.out", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=self._environment(), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def _management_get(self, path: str, timeout: float = 5.0):
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
        data = self._management_get(f"/models/{self.model_name}", timeout)
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
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def group_pids(self) -> list[int]:
        """Pids of every live process of this server (launcher, java, workers)."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                # fields[0] = state, fields[2] = pgrp
                if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

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
        pids = []
        for pid in self.group_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"java") and b"org.pytorch.serve.ModelServer" in cmdline:
                pids.append(pid)
        return pids

    # ------------------------------------------------------------------ misc
    def log_tail(self, lines: int = 40) -> str:
        """The last lines of torchserve.out, ts_log.log and model_log.log (for error messages)."""
        parts = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                text = path.read_bytes()[-200_000:].decode("utf-8", "replace").splitlines()[-lines:]
                parts.append(f"----- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts) or f"(no logs in {self.log_dir})"

    def inference_count(self, settle_s: float = 0.3) -> int:
        """Images embedded by the model so far (rejected images and probes not counted).

        Sums the handler's per-batch log lines in model_log.log. Worker output reaches the log a
        little after the response, so this waits until the count is stable for `settle_s`.
        """
        path = self.log_dir / "model_log.log"
        pattern = re.compile(r"lookalike-embedded-batch n_ok=(\d+)")

        def count() -> int:
            if not path.is_file():
                return 0
            text = path.read_text(errors="replace")
            return sum(int(m) for m in pattern.findall(text))

        value, deadline = count(), time.monotonic() + max(2.0, 4 * settle_s)
        while time.monotonic() < deadline:
            time.sleep(settle_s)
            again = count()
            if again == value:
                break
            value = again
        return value

    def client(self, **kwargs) -> "EmbedderClient":
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


# =============================================================================== client

class EmbedderImageError(ValueError):
    """The embedder rejected this image (map to gRPC INVALID_ARGUMENT / HTTP 400).

    `reason` is one of lookalike.images.REASONS (or "missing_input"); `message` is safe to show.
    """

    def __init__(self, reason: str, message: str, request_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.request_id = request_id
        self.grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class EmbedderProtocolError(RuntimeError):
    """The embedder answered something that is neither a vector nor an error document
    (wrong dimension, garbage): a deployment bug, map to INTERNAL."""


class EmbedderNotReady(grpc.RpcError):
    """Not sent: the embedder is known not to be ready (its health Ping is not "Healthy": TorchServe down,
    restarting, or loading its model, when a request would only wait in its queue until the deadline).
    Looks like the grpc.RpcError of a refused connection: code() is UNAVAILABLE, so callers retry it."""

    def details(self) -> str:
        return "not ready (restarting, or loading its model)"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class EmbedderDeadlineExceeded(grpc.RpcError):
    """An item of `embed_many` that was never sent because the call's deadline had passed.
    Looks like the grpc.RpcError of an expired call: code() is DEADLINE_EXCEEDED."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


def parse_prediction(data: bytes, dim: int | None = None, request_id: str | None = None) -> np.ndarray:
    """Decodes one `prediction` from the embedder: a float32 vector, or raises EmbedderImageError."""
    if data.startswith(ERROR_PREFIX):
        try:
            error = json.loads(data.decode("utf-8"))["error"]
            reason, message = str(error.get("reason", "invalid_image")), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EmbedderProtocolError(f"unparseable error payload from the embedder: {data[:200]!r}") from None
        raise EmbedderImageError(reason, message or reason, request_id)
    try:
        vector = unpack(data, dim)
    except ValueError as exc:
        raise EmbedderProtocolError(f"bad vector from the embedder ({len(data)} bytes): {exc}") from None
    if vector.shape[0] == 0:
        raise EmbedderProtocolError("empty vector from the embedder")
    return vector


class EmbedderClient:
    """gRPC client of the embedder behind TorchServe's inference API.

    Errors: EmbedderImageError (a ValueError) for a bad image; grpc.RpcError for transport/server
    failures (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED for a wrong token, ...), passed
    through unchanged so callers map them with lookalike.status; EmbedderProtocolError for an
    answer of the wrong shape.

    `token`: the inference key; or `token_file`: TorchServe's key_file.json, re-read once when the
    server answers PERMISSION_DENIED/UNAUTHENTICATED (key rotation by restart).
    `model_version`: "" = the model's default version.
    `dim`: expected dimension (checked when given).
    `interceptors`: gRPC client interceptors wrapped around the channel (e.g. to count requests in
    flight); `self.channel` is then the intercepted channel, so clients sharing it are intercepted too.
    Thread-safe; one channel shared by all calls.
    """

    def __init__(self, target: str, token: str | None = None, *, model_name: str = MODEL_NAME,
                 model_version: str = "", token_file: str | os.PathLike | None = None, dim: int | None = None,
                 channel: grpc.Channel | None = None, options: Sequence[tuple[str, object]] | None = None,
                 interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = ()):
        self.target = target
        self.model_name = model_name
        self.model_version = model_version or ""
        self.dim = dim
        self.token_file = Path(token_file) if token_file else None
        if token is None and self.token_file is not None:
            try:
                token = read_key_file(self.token_file)["inference"]
            except (OSError, ValueError, KeyError):
                token = None  # not written yet (TorchServe starting): read again on PERMISSION_DENIED
        self._token = token
        self._lock = threading.Lock()
        self._own_channel = channel is None
        default_options = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                           ("grpc.max_send_message_length", 64 * 1024 * 1024),
                           *RECONNECT_OPTIONS]
        self.channel = channel or grpc.insecure_channel(target, options=list(options or default_options))
        if interceptors:
            self.channel = grpc.intercept_channel(self.channel, *interceptors)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    # ------------------------------------------------------------------ plumbing
    def _metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        md = []
        if self._token:
            md.append(("authorization", f"Bearer {self._token}"))
        if request_id:
            md.append(("x-request-id", request_id))
        return md

    def _request(self, image_bytes: bytes, request_id: str | None,
                 crop: str | None = None) -> inference_pb2.PredictionsRequest:
        inputs = {"data": bytes(image_bytes)}
        if request_id:
            inputs["request_id"] = request_id.encode("utf-8")
        if crop:  # lookalike.crop.CropBox.key: the handler crops the decoded photo before resizing
            inputs["crop"] = crop.encode("ascii")
        return inference_pb2.PredictionsRequest(model_name=self.model_name, model_version=self.model_version,
                                                 input=inputs)

    def _refresh_token(self, exc: grpc.RpcError) -> bool:
        if self.token_file is None or exc.code() not in (grpc.StatusCode.PERMISSION_DENIED,
                                                       grpc.StatusCode.UNAUTHENTICATED):
            return False
        with self._lock:
            try:
                token = read_key_file(self.token_file)["inference"]
            except (OSError, ValueError, KeyError):
                return False
            changed, self._token = token != self._token, token
            return changed

    # ------------------------------------------------------------------ API
    def embed(self, image_bytes: bytes, timeout: float = 10.0, request_id: str | None = None,
              crop: str | None = None) -> np.ndarray:
        """Embeds one image (raw file bytes), or the region `crop` of it (a lookalike.crop.CropBox key
        "x,y,w,h"); returns float32 [dim] with L2 norm 1."""
        request = self._request(image_bytes, request_id, crop)
        try:
            response = self.stub.Predictions(request, timeout=timeout, metadata=self._metadata(request_id))
        except grpc.RpcError as exc:
            if not self._refresh_token(exc):
                raise
            response = self.stub.Predictions(request, timeout=timeout, metadata=self._metadata(request_id))
        return parse_prediction(response.prediction, self.dim, request_id)

    def embed_many(self, images: Sequence[bytes], timeout: float = 30.0,
                   request_ids: Sequence[str | None] | None = None,
                   max_in_flight: int = 64) -> list[np.ndarray | Exception]:
        """Embeds many images with concurrent RPCs (so TorchServe batches them).

        Returns, in order, a float32 vector or the exception for that item (EmbedderImageError,
        grpc.RpcError, EmbedderProtocolError); never raises for a single item's failure.
        `timeout` bounds the whole call: every RPC gets what is left of it. At most `max_in_flight`
        RPCs are outstanding at once (TorchServe's job queue is bounded: job_queue_size).
        """
        ids = list(request_ids) if request_ids is not None else [None] * len(images)
        if len(ids) != len(images):
            raise ValueError("request_ids must have one entry per image")
        deadline = time.monotonic() + timeout
        window = threading.BoundedSemaphore(max(1, int(max_in_flight)))
        futures: list = []
        for img, rid in zip(images, ids):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not window.acquire(timeout=remaining):
                futures.append(None)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                window.release()
                futures.append(None)
                continue
            future = self.stub.Predictions.future(self._request(img, rid), timeout=remaining,
                                                  metadata=self._metadata(rid))
            future.add_done_callback(lambda _f: window.release())
            futures.append(future)
        results: list[np.ndarray | Exception] = []
        retry = []
        for i, (future, rid) in enumerate(zip(futures, ids)):
            if future is None:
                results.append(EmbedderDeadlineExceeded(
                    f"deadline of {timeout:.3g}s passed before the request was sent"))
                continue
            try:
                results.append(parse_prediction(future.result().prediction, self.dim, rid))
            except grpc.RpcError as exc:
                results.append(exc)
                retry.append(i)
            except (EmbedderImageError, EmbedderProtocolError) as exc:
                results.append(exc)
        remaining = deadline - time.monotonic()
        if retry and remaining > 0 and self._refresh_token(results[retry[0]]):
            again = self.embed_many([images[i] for i in retry], remaining, [ids[i] for i in retry], max_in_flight)
            for i, result in zip(retry, again):
                results[i] = result
        return results

    def ping(self, timeout: float = 2.0) -> bool:
        """True when TorchServe answers Ping with "Healthy" (every model has its minimum workers)."""
        try:
            try:
                response = self.stub.Ping(empty_pb2.Empty(), timeout=timeout, metadata=self._metadata())
            except grpc.RpcError as exc:
                if not self._refresh_token(exc):  # a restarted TorchServe has new keys
                    raise
                response = self.stub.Ping(empty_pb2.Empty(), timeout=timeout, metadata=self._metadata())
        except grpc.RpcError:
            return False
        try:
            return json.loads(response.health).get("status") == "Healthy"
        except (ValueError, AttributeError):
            return "Healthy" in response.health and "Unhealthy" not in response.health

    def model_ready(self, timeout: float = 5.0) -> bool:
        """True when the model's worker answers a request end to end.

        Sends an empty image, which the handler rejects without running the model, so it is cheap
        and proves the token, the model registration and a loaded worker.
        """
        try:
            response = self.stub.Predictions(
                inference_pb2.PredictionsRequest(model_name=self.model_name, model_version=self.model_version,
                                                 input={"data": b""}),
                timeout=timeout, metadata=self._metadata())
        except grpc.RpcError:
            return False
        return response.prediction.startswith(ERROR_PREFIX)

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> "EmbedderClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "MODEL_NAME", "ERROR_PREFIX", "DEFAULT_PORTS", "RECONNECT_OPTIONS", "embedder_dir", "default_config_template",
    "default_metrics_config",
    "build_embedder_mar", "free_port", "read_properties", "render_properties", "read_key_file",
    "allowed_urls_property",
    "TorchServeError", "TorchServeProcess", "EmbedderImageError", "EmbedderProtocolError",
    "EmbedderDeadlineExceeded", "EmbedderNotReady",
    "parse_prediction", "EmbedderClient",
]
