#!/usr/bin/env bash
# The one install command, used by the Makefile, the README and every Dockerfile.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh all,dev,tools   or   scripts/install.sh tts
# Installs talkmesh (editable when run in a checkout with VENV set) with the given extras.
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
