#!/usr/bin/env python3
"""Imports every module of the given packages (never `__main__`); exits 1 naming each one that fails.

    import_check.py PACKAGE [PACKAGE ...]

Run at image build time: the gateway and search images are built without torch, so a module that
(transitively) imports torch, or a dependency missing from pyproject.toml, fails the build instead
of the container at run time.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys


def check(packages: list[str]) -> list[str]:
    failures = []
    for name in packages:
        try:
            package = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        for module in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{name}."):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{module.name}: {type(exc).__name__}: {exc}")
    return failures


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    failures = check(argv)
    for failure in failures:
        print(f"import failed: {failure}", file=sys.stderr)
    if "torch" in sys.modules:
        print("import_check: torch was imported, but this image is built without it", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
