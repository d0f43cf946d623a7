"""Generates the Python gRPC stubs from protos/ into lookalike/.

Stubs are committed; `python scripts/gen_protos.py --check` (run by CI) fails when they are stale.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import google.rpc
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGES = ["lookalike/v1", "lookalike/search/v1", "lookalike/torchserve_api"]


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc over every .proto under protos/, writing stubs below out_dir."""
    proto_files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(google.rpc.__path__[0]).parent.parent  # googleapis-common-protos ships .proto files
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"-I{googleapis}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *proto_files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for parent in {Path(package).parent for package in PACKAGES} - {Path("lookalike")}:
        (out_dir / parent / "__init__.py").touch()  # e.g. lookalike/search/ above lookalike/search/v1/
        generated.append(out_dir / parent / "__init__.py")
    for package in PACKAGES:
        (out_dir / package / "__init__.py").touch()
        generated += sorted((out_dir / package).glob("*.py*"))
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        generated = generate(tmp_dir)
        stale = []
        for path in generated:
            rel = path.relative_to(tmp_dir)
            target = ROOT / rel
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(rel))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        wanted = {path.relative_to(tmp_dir) for path in generated}
        for orphan in sorted(path for package in PACKAGES for path in (ROOT / package).glob("*.py*")
                             if path.relative_to(ROOT) not in wanted):  # its .proto was renamed or moved
            if args.check:
                stale.append(str(orphan.relative_to(ROOT)))
            else:
                orphan.unlink()
        if stale:
            print("stale generated stubs (run: python scripts/gen_protos.py):", *stale, sep="\n  ")
            return 1
    print("stubs are current" if args.check else f"generated {len(generated)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
