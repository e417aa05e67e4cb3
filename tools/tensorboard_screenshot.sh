#!/usr/bin/env bash
# The README's monitoring picture: TensorBoard on a run's events, as a real (headless) browser shows it.
#   tools/tensorboard_screenshot.sh RUN_DIR OUT.png [TAG_REGEX]
# Needs chromium (apt-get install chromium). TensorBoard serves RUN_DIR/tb on a free port; chromium
# loads its scalars page, lets it render, and saves the window.
set -euo pipefail
RUN_DIR=${1:?RUN_DIR}; OUT=${2:?OUT.png}; TAGS=${3:-loss|time/|memory/|throughput}
BIN=${BIN:-$(dirname "$0")/../.venv/bin}
PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/tensorboard" --logdir "$RUN_DIR/tb" --host 127.0.0.1 --port "$PORT" >/tmp/tensorboard-$PORT.log 2>&1 &
BOARD=$!
trap 'kill $BOARD 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 1; done
# The SCALARS dashboard draws its charts as SVG, which a headless browser without a GPU renders.
URL="http://127.0.0.1:$PORT/#scalars&_smoothingWeight=0&tagFilter=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$TAGS")"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1300 \
  --virtual-time-budget=15000 --screenshot="$OUT" "$URL" 2>/dev/null
echo "saved $OUT ($URL)"
