#!/usr/bin/env bash
# Installs everything Lookalike needs on a fresh Debian machine; idempotent and quick when up to date.
#   system: Java 17 (TorchServe), redis-server, Chromium (browser tests), stress-ng (make test-stress)
#   python: .venv with the project (editable) and its serve/dev extras; the TorchServe model archive
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v java >/dev/null 2>&1 || apt_packages+=(openjdk-17-jre-headless)
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v stress-ng >/dev/null 2>&1 || apt_packages+=(stress-ng)  # make test-stress (CPU hog)
if [ "${LOOKALIKE_SKIP_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${apt_packages[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.lookalike-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  # (this machine's pip config names local indexes that may be absent: hide those warnings only)
  .venv/bin/python -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m pip install -q -e '.[serve,dev]' 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f .venv/.lookalike-installed-*
  touch "$stamp"
fi
PYTHON=.venv/bin/python scripts/install_deploy_tools.sh
echo "setup: building the TorchServe model archive"
.venv/bin/python services/embedder/build_mar.py --model-store var/model-store
echo "setup: done"
