#!/usr/bin/env bash
# Real Triton 2.51 (CPU, Python backend) for bench/vs_triton_python.py - a bench set-up, not part of Kiln's
# install (idempotent).
#
# The PyPI wheel nvidia-pytriton ships the `tritonserver` binary with its Python backend; it goes into a venv of
# its own outside the repository, so it never touches Kiln's pins:
#   $TRITON_VENV (default /tmp/pytriton-venv)      python3 -m venv + pip install nvidia-pytriton==$PYTRITON_PIN
#   .../site-packages/pytriton/tritonserver/      bin/tritonserver, backends/python/, python_backend_stubs/3.X/
#   .../site-packages/nvidia_pytriton.libs/       the shared libraries the binaries link (-> LD_LIBRARY_PATH)
# The Python backend stub embeds the system libpython3.X, so the models' `import numpy` needs Debian's
# python3-numpy. Triton looks for a backend in <backend-directory>/<name>/, with the stub beside
# libtriton_python.so; that folder is assembled here:
#   $TRITON_BACKENDS (default /tmp/triton-backends)/python/  libtriton_python.so, triton_python_backend_utils.py,
#                                                            triton_python_backend_stub (the system Python's)
#
# Usage: bash bench/setup_triton.sh          (root, or sudo for apt-get; the paths are printed at the end)
set -euo pipefail

PYTRITON_PIN="${PYTRITON_PIN:-0.7.0}"
venv="${TRITON_VENV:-/tmp/pytriton-venv}"
backends="${TRITON_BACKENDS:-/tmp/triton-backends}"
system_python=/usr/bin/python3   # the interpreter whose libpython the stub embeds

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo_cmd=(sudo)
fi

# 1. numpy for the system Python (the stub's interpreter).
if dpkg-query -W -f='${Status}' python3-numpy 2>/dev/null | grep -q "install ok installed"; then
  echo "python3-numpy: already installed"
else
  echo "python3-numpy: installing"
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q python3-numpy
fi
py_version="$("$system_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
"$system_python" -c 'import sys, numpy; print("system python", sys.version.split()[0], "numpy", numpy.__version__)'

# 2. The wheel, in its own venv.
if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating $venv"
  "$system_python" -m venv "$venv"
fi
have="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("nvidia-pytriton"))' \
  2>/dev/null || true)"
if [[ "$have" == "$PYTRITON_PIN" ]]; then
  echo "nvidia-pytriton: already installed ($have)"
else
  echo "nvidia-pytriton: installing $PYTRITON_PIN"
  "$venv/bin/pip" install -q --disable-pip-version-check "nvidia-pytriton==$PYTRITON_PIN"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
server_root="$site/pytriton/tritonserver"
libs="$site/nvidia_pytriton.libs"
tritonserver="$server_root/bin/tritonserver"
stub="$server_root/python_backend_stubs/$py_version/triton_python_backend_stub"
for path in "$tritonserver" "$server_root/backends/python/libtriton_python.so" "$stub" "$libs"; do
  if [[ ! -e "$path" ]]; then
    echo "error: $path missing from the nvidia-pytriton wheel (layout: find $server_root)" >&2
    exit 1
  fi
done

# 3. The backends folder: the wheel's python backend with the stub for the system Python beside it.
mkdir -p "$backends/python"
for file in "$server_root/backends/python/libtriton_python.so" \
            "$server_root/backends/python/triton_python_backend_utils.py" "$stub"; do
  target="$backends/python/$(basename "$file")"
  if ! cmp -s "$file" "$target"; then
    cp "$file" "$target"
    echo "copied $(basename "$file") -> $backends/python/"
  fi
done

# 4. Check that the binaries find all their libraries.
missing="$(for binary in "$tritonserver" "$backends/python/libtriton_python.so" \
                         "$backends/python/triton_python_backend_stub"; do
  LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$binary" | grep "not found" || true
done)"
if [[ -n "$missing" ]]; then
  echo "error: libraries not found:" >&2
  echo "$missing" >&2
  exit 1
fi

echo
echo "Triton is ready (bench/vs_triton_python.py finds it under these defaults, or TRITON_VENV/TRITON_BACKENDS):"
echo "  tritonserver:      $tritonserver"
echo "  LD_LIBRARY_PATH:   $libs"
echo "  backend directory: $backends (python/ with the Python $py_version stub)"
echo "Run it with:"
echo "  LD_LIBRARY_PATH=$libs $tritonserver --backend-directory $backends --model-repository DIR"
