#!/usr/bin/env bash
# The peer servers the benchmarks compare Kiln with, each in its own venv so it cannot disturb Kiln's pins
# (idempotent).
#
#   bench/.venv-mlserver   MLServer (PyPI `mlserver`, pinned) + onnxruntime, for bench/vs_mlserver.py; the ONNX
#                          runtime it serves with is bench/mlserver_runtime/onnx_runtime.py (put on PYTHONPATH by
#                          the script). git ignores the venv (bench/.gitignore).
#
# uvloop is pinned below 0.22: MLServer 1.7.1's parallel inference workers call asyncio.get_event_loop() in a
# fresh process, which uvloop 0.22+ answers with "RuntimeError: There is no current event loop in thread
# 'MainThread'", so with the newest uvloop every model load fails with "Worker process stopped unexpectedly".
#
# Usage: bash bench/setup_peers.sh        (PYTHON defaults to python3; 3.10-3.12)
set -euo pipefail

MLSERVER_PIN="${MLSERVER_PIN:-1.7.1}"
ONNXRUNTIME_PIN="${ONNXRUNTIME_PIN:-1.31.1}"   # the version Kiln's venv uses, so both run the same kernels
UVLOOP_PIN="${UVLOOP_PIN:-0.21.0}"

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$bench_dir/.venv-mlserver"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating $venv"
  "$python" -m venv "$venv"
fi
want="mlserver==$MLSERVER_PIN onnxruntime==$ONNXRUNTIME_PIN uvloop==$UVLOOP_PIN"
have="$("$venv/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(f"mlserver=={version('mlserver')} onnxruntime=={version('onnxruntime')} uvloop=={version('uvloop')}")
PY
)"
if [[ "$have" == "$want" ]]; then
  echo "MLServer peer: already installed ($have)"
else
  echo "MLServer peer: installing $want"
  "$venv/bin/pip" install -q --disable-pip-version-check $want
fi
"$venv/bin/mlserver" --version
echo "MLServer is ready: $venv/bin/mlserver (used by bench/vs_mlserver.py)"
