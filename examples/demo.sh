#!/usr/bin/env bash
# `make demo`: prepare the three pretrained models and their server-side pipelines (ensembles) into a repository,
# serve it with `kiln serve`, run the three clients on real images (client-side pre-/post-processing, then the
# same through the pipelines), compare the two, and leave the PNGs and the printed results in $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-build/demo}
HTTP_PORT=${DEMO_HTTP_PORT:-8100}
GRPC_PORT=${DEMO_GRPC_PORT:-8101}
METRICS_PORT=${DEMO_METRICS_PORT:-8102}
REPO="$DEMO_DIR/repository"

rm -rf "$REPO"
mkdir -p "$DEMO_DIR"
for task in classification detection segmentation; do
  "$PY" "examples/$task/prepare.py" "$REPO" >/dev/null
done
echo "prepared efficientnet_lite0, layout_detector, text_segmenter and the pipelines classify_image, detect_layout,"
echo "segment_text in $REPO"

"$PY" -m kiln serve --model-repository "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" >"$DEMO_DIR/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT

"$PY" - "$HTTP_PORT" "$SERVER" "$DEMO_DIR/server.log" <<'PY'
import os, sys, time, urllib.request
port, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"kiln serve exited; its log:\n{open(log).read()}")
    time.sleep(0.2)
sys.exit(f"kiln serve was not ready in 120 s; see {log}")
PY
echo "kiln serve is ready on 127.0.0.1:$HTTP_PORT (HTTP) and :$GRPC_PORT (gRPC); log: $DEMO_DIR/server.log"

{
  echo "== classification (HTTP): EfficientNet-Lite0, top 5"
  "$PY" examples/classification/client.py -u "127.0.0.1:$HTTP_PORT" -c 5 -o "$DEMO_DIR" \
    skimage:chelsea skimage:coffee skimage:astronaut
  echo "== detection (gRPC): PicoDet document layout"
  "$PY" examples/detection/client.py -i grpc -u "127.0.0.1:$GRPC_PORT" -o "$DEMO_DIR" skimage:page
  echo "== segmentation (HTTP): PP-OCRv4 DB text probability"
  "$PY" examples/segmentation/client.py -u "127.0.0.1:$HTTP_PORT" -o "$DEMO_DIR" skimage:text skimage:page
  echo "== the same three tasks server-side: image bytes to the ensembles, results back"
  "$PY" examples/classification/client.py -u "127.0.0.1:$HTTP_PORT" -c 5 --pipeline skimage:chelsea
  "$PY" examples/detection/client.py -i grpc -u "127.0.0.1:$GRPC_PORT" -o "$DEMO_DIR/pipeline" --pipeline \
    skimage:page
  "$PY" examples/segmentation/client.py -u "127.0.0.1:$HTTP_PORT" -o "$DEMO_DIR/pipeline" --pipeline skimage:text
  echo "== client-side vs server-side, same images"
  "$PY" examples/pipelines.py -u "127.0.0.1:$HTTP_PORT"
} | tee "$DEMO_DIR/results.txt"
echo "results: $DEMO_DIR/results.txt and $DEMO_DIR/*.png"
