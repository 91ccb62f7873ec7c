#!/usr/bin/env bash
# Regenerates the Python stubs in talkmesh/v1/ from protos/. Usage: scripts/gen_protos.sh [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
py=${PYTHON:-python}
mkdir -p "$out/talkmesh/v1"
"$py" -m grpc_tools.protoc -I "$root/protos" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/protos/talkmesh/v1/*.proto
