"""The docs name real things, and the references cover what exists.

README.md's code map, docs/ and the READMEs beside the code cite files (`services/gateway/lookalike_gateway/rest.py`),
functions (`lookalike/images.py::decode_image`), settings (`LOOKALIKE_GATEWAY_CACHE_TTL_S`), metric names, CLI
options and each other's headings: each must exist. The other way round, docs/configuration.md has every setting,
docs/api.md every REST route and public RPC, each service README every module of its package. When code moves,
these tests name the doc and the stale reference, so the docs are fixed in the same change.

What counts as a repository path: a backticked token (or a word of one: `python bench/served.py`) whose first
component exists beside the doc, at the repository root or in a service's package root
(`lookalike_gateway/...`); placeholders (`<data-dir>/logs`, `{npz,json}`, `*.png`) and git-ignored outputs that a
run writes (`bench/results/load-paced.json`) are not checked. Runtime paths (`var/...`, `/v1/search`,
`adaptations/<collection>/...`) start with no repository entry and are left alone.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Checked docs: the README, docs/ and the READMEs beside the code.
DOCS = sorted({ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("services/*/README.md"),
               ROOT / "deploy/README.md", ROOT / "deploy/CAPACITY.md", ROOT / "bench/README.md"})
DOCS = [d for d in DOCS if d.is_file()]
# `lookalike_gateway/rest.py` is short for services/gateway/lookalike_gateway/rest.py.
PACKAGE_ROOTS = [ROOT / "services" / name for name in ("gateway", "search", "embedder")]
# Made by a run (make setup / make run / the tests), never in a checkout.
RUNTIME_DIRS = {"var", ".venv", "test-artifacts", "lookalike-client", "build", "dist"}
PLACEHOLDER = re.compile(r"[<>{}*$…|\[\]?]")
SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
EXTENSIONS = (".py", ".md", ".proto", ".yaml", ".yml", ".json", ".toml", ".sh", ".properties", ".js", ".css",
              ".html", ".png", ".svg", ".txt", ".cfg", ".ini")


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".gitignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").lstrip("/").rstrip("/")))
    return patterns


IGNORE = _ignore_patterns()


def git_ignored(rel: str) -> bool:
    """Whether .gitignore ignores the repository path `rel` (the last matching pattern wins, as in git)."""
    ignored = False
    parts = rel.split("/")
    for negate, pattern in IGNORE:
        if "/" in pattern:
            hit = fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch("/".join(parts[:i]), pattern)
                                                       for i in range(1, len(parts)))
        else:
            hit = any(fnmatch.fnmatch(part, pattern) for part in parts)
        if hit:
            ignored = not negate
    return ignored


def spans(doc: Path) -> list[str]:
    """Backticked inline spans outside fenced blocks, each split into words."""
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    words = []
    for span in SPAN.findall(text):
        words.extend(w.strip(",;:.()'\"") for w in span.split())
    return [w for w in words if w]


def path_refs(doc: Path) -> list[tuple[str, str]]:
    """(path, qualname or '') for every token of `doc` that names a file of the repository."""
    refs = []
    for word in spans(doc):
        if PLACEHOLDER.search(word) or "=" in word or word.startswith(("http", "-", "/", "~")):
            continue
        path, _, name = word.partition("::")
        path = path.rstrip("/")
        if ":" in path:  # an image tag (lookalike/gateway:dev), a host:port
            continue
        if not path or ("/" not in path and not path.endswith(EXTENSIONS)):
            continue
        first = path.split("/")[0]
        if first in RUNTIME_DIRS:
            continue
        if any((base / first).exists() for base in _bases(doc)) or first in ("..", "."):
            refs.append((path, name))
    return refs


def _bases(doc: Path) -> list[Path]:
    return [doc.parent, ROOT, *PACKAGE_ROOTS]


def resolve(doc: Path, path: str) -> Path | None:
    for base in _bases(doc):
        candidate = (base / path).resolve()
        if candidate.exists() and (candidate == ROOT or ROOT in candidate.parents):
            return candidate
    return None


@cache
def defined_names(source: Path) -> frozenset[str]:
    """Dotted names a file defines: classes, functions and methods (nested ones too), module-level
    assignments; for .proto files services, rpcs, messages, enums and their fields."""
    text = source.read_text(encoding="utf-8")
    names: set[str] = set()
    if source.suffix == ".py":
        def walk(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(prefix + child.name)
                    walk(child, prefix + child.name + ".")
                elif isinstance(child, (ast.Assign, ast.AnnAssign)):
                    targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                    for target in targets:
                        if isinstance(target, ast.Name):
                            names.add(prefix + target.id)
                elif isinstance(child, (ast.If, ast.Try, ast.With)):
                    walk(child, prefix)
        walk(ast.parse(text), "")
    elif source.suffix == ".proto":
        # Services, rpcs, messages, enums, fields and enum values: each part of a dotted name must be one.
        names.update(re.findall(r"\b(?:service|message|enum|rpc)\s+(\w+)", text))
        names.update(re.findall(r"(\w+)\s*=\s*\d+", text))
    return frozenset(names)


def _all_refs():
    return [pytest.param(doc, path, name, id=f"{doc.relative_to(ROOT)}:{path}{'::' + name if name else ''}")
            for doc in DOCS for path, name in dict.fromkeys(path_refs(doc))]


def test_the_docs_cite_repository_paths():
    """Guards the extraction itself: the README's code map is found, so the per-path checks check something."""
    readme = {path for path, _ in path_refs(ROOT / "README.md")}
    assert "services/gateway/lookalike_gateway/rest.py" in {p for p in readme} or any(
        p.startswith("services/gateway/") for p in readme)
    assert any(p.startswith("services/search/") for p in readme)
    assert any(p.startswith("services/embedder/") for p in readme)
    assert any(name for doc in DOCS for _, name in path_refs(doc)), "no path::name reference found"


@pytest.mark.parametrize("doc,path,name", _all_refs())
def test_cited_path_exists(doc: Path, path: str, name: str):
    found = resolve(doc, path)
    if found is None:
        rel = (doc.parent / path).resolve()
        rel_to_root = rel.relative_to(ROOT).as_posix() if ROOT in rel.parents else path
        if git_ignored(path) or git_ignored(rel_to_root):
            pytest.skip(f"{path} is a git-ignored output of a run")
        pytest.fail(f"{doc.relative_to(ROOT)} cites `{path}`, which does not exist")
    if name:
        assert found.is_file(), f"{doc.relative_to(ROOT)}: `{path}::{name}` is not a file"
        defined = defined_names(found)
        ok = (all(part in defined for part in name.split(".")) if found.suffix == ".proto" else name in defined)
        assert ok, (
            f"{doc.relative_to(ROOT)} cites `{path}::{name}`, but {found.relative_to(ROOT)} defines no {name}")


# -- settings and metrics named in the docs ------------------------------------------------------------

def _settings_env_names() -> dict[str, set[str]]:
    from lookalike_embedder.settings import ENV_SETTINGS, EmbedderSettings
    from lookalike_gateway.settings import GatewaySettings
    from lookalike_search.settings import SearchSettings

    names = {prefix: {prefix + field.upper() for field in cls.model_fields}
             for prefix, cls in (("LOOKALIKE_GATEWAY_", GatewaySettings), ("LOOKALIKE_SEARCH_", SearchSettings))}
    names["LOOKALIKE_EMBEDDER_"] = {"LOOKALIKE_EMBEDDER_" + field.upper() for field in ENV_SETTINGS}
    assert ENV_SETTINGS <= set(EmbedderSettings.model_fields)
    return names


def _embedder_yaml_keys() -> set[str]:
    """The model-config.yaml `handler:` keys EmbedderSettings reads (every field)."""
    from lookalike_embedder.settings import EmbedderSettings

    return set(EmbedderSettings.model_fields)


SETTING = re.compile(r"\bLOOKALIKE_(?:GATEWAY|SEARCH|EMBEDDER)_[A-Z0-9_]*[A-Z0-9]")


def test_every_setting_the_docs_name_exists():
    from lookalike import priority

    known = set().union(*_settings_env_names().values()) | {priority.ENV}  # `lookalike serve` reads that one
    stale = sorted({f"{doc.relative_to(ROOT)}: {name}" for doc in DOCS
                    for name in SETTING.findall(doc.read_text(encoding="utf-8")) if name not in known})
    assert not stale, ("settings named in the docs but not in GatewaySettings/SearchSettings/EmbedderSettings:\n"
                       + "\n".join(stale))


def test_the_configuration_reference_lists_every_setting():
    """docs/configuration.md has a row for each setting: a new setting gets its row in the same change."""
    text = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    missing = sorted(name for names in _settings_env_names().values() for name in names
                     if f"`{name}`" not in text)
    embedder = text[text.index("## Embedder"):]
    embedder = embedder[:embedder.find("\n## ")] if "\n## " in embedder else embedder
    missing += sorted(f"handler.{key}" for key in _embedder_yaml_keys() if f"| `{key}` |" not in embedder)
    assert not missing, "add a row to docs/configuration.md for: " + ", ".join(missing)


METRIC = re.compile(r"\blookalike_(?:gateway|search|stack|embedder)_[a-z0-9_]*[a-z0-9]")


@cache
def _source_text() -> str:
    files = [*ROOT.glob("lookalike/**/*.py"), *ROOT.glob("services/*/lookalike_*/**/*.py"),
             ROOT / "services/embedder/metrics.yaml"]
    return "\n".join(f.read_text(encoding="utf-8") for f in files if "_pb2" not in f.name)


def test_every_metric_the_docs_name_is_exported_by_the_code():
    source = _source_text()
    stale = set()
    for doc in DOCS:
        for name in METRIC.findall(doc.read_text(encoding="utf-8")):
            base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)  # prometheus_client adds these
            if name not in source and base not in source:
                stale.add(f"{doc.relative_to(ROOT)}: {name}")
    assert not stale, "metric names in the docs that no code exports:\n" + "\n".join(sorted(stale))


# -- links between the docs ----------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


def test_links_between_the_docs_resolve():
    """A relative link names an existing file and, with #anchor, one of its headings."""
    broken = []
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text(encoding="utf-8"))):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


# -- the command lines in the docs -----------------------------------------------------------------------

# `lookalike SUB` and its arguments up to a comment, the end of a code span, `&&`, `;` or a shell pipe.
COMMAND = re.compile(r"\blookalike ([a-z][a-z-]+)((?: +(?!\|)[^\s#`&;]+)*)")


def _cli_options() -> dict[str, set[str]]:
    import argparse

    from lookalike.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(parser._option_string_actions) for name, parser in sub.choices.items()}


def test_every_cli_option_the_docs_use_exists():
    """`lookalike SUB --option` in a doc (prose or example) is an option of that subcommand."""
    options = _cli_options()
    stale, seen = [], 0
    for doc in DOCS:
        for line in doc.read_text(encoding="utf-8").splitlines():
            for command, rest in COMMAND.findall(line):
                if command not in options:
                    continue  # prose such as "lookalike serve" is checked, "lookalike is" is not a command
                seen += 1
                for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", rest):
                    if flag not in options[command]:
                        stale.append(f"{doc.relative_to(ROOT)}: lookalike {command} {flag}")
    assert seen, "no `lookalike SUB` command line found in the docs"
    assert not stale, "options the CLI does not have:\n" + "\n".join(sorted(set(stale)))


@pytest.mark.parametrize("service,package", [("gateway", "lookalike_gateway"), ("search", "lookalike_search"),
                                             ("embedder", "lookalike_embedder")])
def test_each_service_readme_names_every_module(service: str, package: str):
    """A service's README has its module map: a new module gets its line in the same change."""
    text = (ROOT / "services" / service / "README.md").read_text(encoding="utf-8")
    modules = sorted(p.name for p in (ROOT / "services" / service / package).glob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    missing = [m for m in modules if m not in text]
    assert not missing, f"services/{service}/README.md does not name: " + ", ".join(missing)


# -- the API reference covers the API ----------------------------------------------------------------------

def _route(method: str, path: str) -> str:
    return f"{method.upper()} {re.sub(r'{[^}]*}', '{}', path)}"


def test_the_rest_table_lists_exactly_the_served_routes():
    """docs/api.md's route table and openapi.json (what the gateway serves) name the same routes."""
    import json

    spec = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))
    served = {_route(method, path) for path, methods in spec["paths"].items() for method in methods}
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE|PATCH) (/[^`]*)`", text, re.MULTILINE)
    documented = {_route(method, path) for method, path in rows}
    assert documented == served, (f"in openapi.json only: {sorted(served - documented)}; "
                                  f"in docs/api.md only: {sorted(documented - served)}")


def test_every_public_rpc_is_documented():
    """Each RPC of the public protos is named in docs/api.md or docs/classifier.md."""
    text = "".join((ROOT / "docs" / name).read_text(encoding="utf-8") for name in ("api.md", "classifier.md"))
    rpcs = {rpc for proto in (ROOT / "protos/lookalike/v1").glob("*.proto")
            for rpc in re.findall(r"^\s*rpc\s+(\w+)", proto.read_text(encoding="utf-8"), re.MULTILINE)}
    assert rpcs, "no rpc found in protos/lookalike/v1"
    missing = sorted(rpc for rpc in rpcs if f"`{rpc}`" not in text)
    assert not missing, "RPCs not in docs/api.md or docs/classifier.md: " + ", ".join(missing)
