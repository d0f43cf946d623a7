"""The REST contract against a live gateway: the spec it serves is the committed openapi.json, and
Schemathesis (every route, PUT and DELETE included; all checks; a fixed seed; a bounded number of
examples) finds nothing to report, with no answer slower than 10 s.

Runs on its own small stack: Schemathesis writes and deletes products and trains classifiers, which the
shared session stack's tests must not see."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, clothing_split

pytestmark = pytest.mark.e2e

SEED = 1
MAX_EXAMPLES = 10  # per operation and phase: ~400 cases, well under a minute on a quiet machine
MAX_RESPONSE_S = 10
PER_CLASS = 4


@pytest.fixture(scope="module")
def contract_stack(tmp_path_factory):
    """A stack with PER_CLASS photos per category indexed (its own: Schemathesis changes it)."""
    from lookalike.ingest import index_items, scan_folder
    from lookalike.stack import Stack, StackConfig

    source = clothing_split("train")
    catalogue = tmp_path_factory.mktemp("contract-catalogue")
    for category in sorted(p for p in source.iterdir() if p.is_dir()):
        (catalogue / category.name).mkdir()
        for photo in sorted(category.iterdir())[:PER_CLASS]:
            (catalogue / category.name / photo.name).symlink_to(photo)
    config = StackConfig(data_dir=tmp_path_factory.mktemp("contract-stack"), http_port=0, grpc_port=0,
                         extra_gateway_env={"LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S": "0.5"})
    with Stack(config) as running:
        report = index_items(running.grpc_address, scan_folder(catalogue), progress=False)
        assert report.failed == 0, report.failures
        yield running


def test_served_spec_is_the_committed_one(contract_stack):
    served = httpx.get(f"{contract_stack.http_url}/openapi.json", timeout=30).json()
    committed = json.loads((ROOT / "openapi.json").read_text())
    assert served == committed, "the gateway serves another spec: run python scripts/gen_openapi.py"


def test_schemathesis_finds_nothing(contract_stack, tmp_path):
    """`schemathesis run --checks all` against the live gateway: 0 failures, 0 errors, no answer over
    10 s (--max-response-time fails the case). The hooks (tests/contract/hooks.py) give it real photos
    for the image fields and the rules the spec cannot state."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.hooks", "PYTHONPATH": str(ROOT),
           "NO_COLOR": "1", "COLUMNS": "120"}
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{contract_stack.http_url}/openapi.json",
               "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
               "--max-response-time", str(MAX_RESPONSE_S), "--request-timeout", "30", "--workers", "1",
               "--report", "junit", "--report-dir", str(tmp_path)]  # cwd tmp_path: its .schemathesis cache too
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = done.stdout[done.stdout.rfind("SUMMARY"):] if "SUMMARY" in done.stdout else done.stdout[-4000:]
    print(summary)  # the figures for the record (pytest -s)
    assert done.returncode == 0, f"{done.stdout[-12000:]}\n{done.stderr[-3000:]}"
    tested = re.search(r"Tested: (\d+)", summary)
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert tested and int(tested.group(1)) >= 14, summary  # every operation of the spec
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 200, summary
    assert "No issues found" in summary, summary
