#!/usr/bin/env bash
# Runs a command beside a CPU hog that keeps every core busy (`stress-ng --cpu N`, or a pure-Python hog when
# stress-ng is missing), then stops the hog; exits with the command's status.
#   scripts/with_cpu_hog.sh [--cpus N] COMMAND...     (N defaults to the number of cores)
# `make test-stress` runs the test suite this way: tests must hold on a loaded machine (handshakes, not sleeps).
set -uo pipefail
cpus=$(nproc)
if [ "${1:-}" = "--cpus" ]; then cpus=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: $0 [--cpus N] COMMAND..." >&2; exit 2; }

if command -v stress-ng >/dev/null 2>&1; then
  stress-ng --cpu "$cpus" --quiet &
else
  echo "with_cpu_hog: stress-ng not found, using a Python CPU hog" >&2
  python3 -c '
import multiprocessing, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit runs atexit: the spinners stop too
def spin():
    while True:
        pass
for _ in range(int(sys.argv[1])):
    multiprocessing.Process(target=spin, daemon=True).start()
multiprocessing.Event().wait()
' "$cpus" &
fi
hog=$!
trap 'kill -TERM -- "$hog" 2>/dev/null; wait "$hog" 2>/dev/null' EXIT INT TERM
echo "with_cpu_hog: $cpus CPU hog(s) running (pid $hog)" >&2
"$@"
