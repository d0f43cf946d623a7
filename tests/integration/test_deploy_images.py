"""The python images (deploy/docker/Dockerfile.python): the gateway and the search service import without
torch, and every distribution they import is declared in pyproject.toml."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


_IMPORT_PROBE = textwrap.dedent("""
    # Imports every gateway/search module as the lite image would: a module is importable only if
    # it is the standard library, the project itself, or belongs to a distribution that pyproject's
    # dependencies minus torch/efficientnet-* pull in (transitively). Optional imports of anything
    # else (grpcio probes for grpc_tools, say) then fail softly, exactly as in the image.
    import importlib.abc, importlib.metadata as md, importlib.util, json, re, sys, tomllib
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    HEAVY = ("torch", "efficientnet")
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    import_check = load(sys.argv[1], "import_check")
    reqs = load(sys.argv[2], "reqs")
    deps = tomllib.load(open(sys.argv[3], "rb"))["project"]["dependencies"]
    todo = [norm(Requirement(r).name) for r in reqs.select(deps, list(HEAVY), [])]
    closure, env = {"lookalike"}, default_environment()
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in requires:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(norm(req.name))
    owners = {m: {norm(d) for d in ds} for m, ds in md.packages_distributions().items()}
    for name in [m for m in sys.modules if m.split(".")[0] == "packaging"]:
        if "packaging" not in closure:
            del sys.modules[name]  # the probe's own import must not hide a missing one

    class ImageOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top.startswith(HEAVY):
                raise ImportError(f"{name}: torch/efficientnet are not in the gateway/search images")
            dists = owners.get(top)
            if top in sys.stdlib_module_names or not dists or dists & closure:
                return None
            raise ImportError(f"{name}: from {sorted(dists)}, not declared in pyproject.toml dependencies")

    sys.meta_path.insert(0, ImageOnly())
    failures = import_check.check(["lookalike_gateway", "lookalike_search"])
    print(json.dumps({"failures": failures}))
""")


def test_gateway_and_search_import_without_torch_and_declare_their_dependencies():
    """What deploy/docker/Dockerfile.python builds: pyproject's dependencies minus torch and
    efficientnet-*. Every gateway/search module must import without those, and every distribution
    they import must be (transitively) declared in pyproject.toml - else the image fails at run time."""
    if importlib.util.find_spec("packaging") is None:
        pytest.skip("packaging is not installed")
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(ROOT / "deploy/docker/import_check.py"),
         str(ROOT / "deploy/docker/requirements_from_pyproject.py"), str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, timeout=300, cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], (
        "gateway/search modules that would not import in their image:\n" + "\n".join(report["failures"]))
