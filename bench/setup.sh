#!/usr/bin/env bash
# Make the perf_analyzer binary shipped in the tritonclient wheel runnable (idempotent).
#
# perf_analyzer links against two libraries that the wheel does not carry:
#   libb64.so.0d     -> Debian package libb64-0d
#   libcudart.so.12  -> PyPI package nvidia-cuda-runtime-cu12 (site-packages/nvidia/cuda_runtime/lib)
# The second must be on LD_LIBRARY_PATH when perf_analyzer runs; the line to use is printed at the end
# (bench/_common.py builds the same environment for the Python bench scripts).
#
# Usage: bash bench/setup.sh            (VENV defaults to .venv, relative to the repository root)
#        VENV=/path/to/venv bash bench/setup.sh
set -euo pipefail

CUDA_RUNTIME_PIN="${CUDA_RUNTIME_PIN:-12.9.79}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-.venv}"
case "$venv" in
  /*) ;;
  *) venv="$repo_root/$venv" ;;
esac
python="$venv/bin/python"
perf_analyzer="$venv/bin/perf_analyzer"

if [[ ! -x "$python" ]]; then
  echo "error: no Python at $python; create the venv first (make setup)" >&2
  exit 1
fi
if [[ ! -x "$perf_analyzer" ]]; then
  echo "error: $perf_analyzer missing; install tritonclient==2.50.0 into the venv (make setup)" >&2
  exit 1
fi

# 1. libb64 from Debian.
if dpkg-query -W -f='${Status}' libb64-0d 2>/dev/null | grep -q "install ok installed"; then
  echo "libb64-0d: already installed"
else
  sudo_cmd=()
  if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo)
  fi
  echo "libb64-0d: installing"
  if ! "${sudo_cmd[@]}" apt-get install -y -q libb64-0d; then
    "${sudo_cmd[@]}" apt-get update -q
    "${sudo_cmd[@]}" apt-get install -y -q libb64-0d
  fi
fi

# 2. libcudart.so.12 from PyPI, into the venv.
if "$venv/bin/pip" show -q nvidia-cuda-runtime-cu12 >/dev/null 2>&1; then
  echo "nvidia-cuda-runtime-cu12: already installed ($("$venv/bin/pip" show nvidia-cuda-runtime-cu12 \
    | awk '/^Version:/ {print $2}'))"
else
  echo "nvidia-cuda-runtime-cu12: installing $CUDA_RUNTIME_PIN"
  if ! "$venv/bin/pip" install -q "nvidia-cuda-runtime-cu12==$CUDA_RUNTIME_PIN"; then
    echo "pin $CUDA_RUNTIME_PIN not available; installing the newest 12.x" >&2
    "$venv/bin/pip" install -q "nvidia-cuda-runtime-cu12>=12,<13"
  fi
fi

cuda_lib="$("$python" - <<'EOF'
import importlib.util
import pathlib

spec = importlib.util.find_spec("nvidia.cuda_runtime")
paths = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
for p in paths:
    lib = pathlib.Path(p) / "lib"
    if (lib / "libcudart.so.12").exists():
        print(lib)
        break
EOF
)"
if [[ -z "$cuda_lib" ]]; then
  echo "error: libcudart.so.12 not found under site-packages/nvidia/cuda_runtime/lib" >&2
  exit 1
fi

# 3. Check that perf_analyzer loads and runs.
env_line="LD_LIBRARY_PATH=$cuda_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
missing="$(LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$perf_analyzer" \
  | grep "not found" || true)"
if [[ -n "$missing" ]]; then
  echo "error: perf_analyzer still misses libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
if ! LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$perf_analyzer" --version; then
  echo "error: perf_analyzer --version failed" >&2
  exit 1
fi

echo
echo "perf_analyzer is ready. Run it with:"
echo "  export $env_line"
echo "  $perf_analyzer ..."
