#!/usr/bin/env bash
# Runs buf (the protobuf linter) on protos/, installing it on first use: the @bufbuild/buf npm
# package (it ships the binary) goes into $BUF_NODE_DIR (default .venv/node, next to the Python
# venv), once per BUF_VERSION. Usage: scripts/buf.sh lint
# Exit status 127: buf is not installed and could not be (npm missing or the install failed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${BUF_VERSION:-1.75.0}
node_dir=${BUF_NODE_DIR:-$root/.venv/node}
buf=$node_dir/node_modules/.bin/buf
stamp=$node_dir/.installed-buf-$version
if [ ! -f "$stamp" ] || [ ! -x "$buf" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "scripts/buf.sh: npm is needed to install @bufbuild/buf@$version" >&2
    exit 127
  fi
  mkdir -p "$node_dir"
  if ! (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error "@bufbuild/buf@$version" >/dev/null); then
    echo "scripts/buf.sh: npm could not install @bufbuild/buf@$version into $node_dir" >&2
    exit 127
  fi
  touch "$stamp"
fi
cd "$root"
exec "$buf" "$@"
