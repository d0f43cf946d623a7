"""Writes the REST API's OpenAPI document to openapi.json at the repository root (for reviewers and
client generators): exactly what a gateway with the default settings serves at /openapi.json.

`python scripts/gen_openapi.py --check` (run by `make test`) fails when the committed file is stale;
tests/e2e/test_contract.py checks that a live gateway serves the same document.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from lookalike_gateway.openapi import COMMITTED, dumps
    from lookalike_gateway.rest import offline_spec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed openapi.json is stale")
    args = parser.parse_args()
    text = dumps(offline_spec())
    if args.check:
        committed = COMMITTED.read_text() if COMMITTED.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), "openapi.json (committed)",
                                        "openapi.json (generated)", lineterm="", n=1)
            print("stale openapi.json (run: python scripts/gen_openapi.py):", *list(diff)[:60], sep="\n")
            return 1
        print("openapi.json is current")
        return 0
    COMMITTED.write_text(text)
    print(f"wrote {COMMITTED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
