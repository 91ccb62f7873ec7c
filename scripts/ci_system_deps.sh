#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv: Debian's `prometheus` package
# (prometheus + promtool, for the rule tests and the real-Prometheus test in tests/deploy).
# Idempotent and quiet when everything is installed already. Needs root (apt-get); the tests
# that need these tools skip with a message pointing here when they are missing.
# kubectl (for `kubectl kustomize`) is expected on the CI image; it is not a Debian package.
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ci_system_deps: missing ${need[*]}; run as root to install (apt-get install prometheus)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: just the server and promtool (not node-exporter and friends). The
# package's service is not started in containers (no init system); the tests run their own.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null
echo "ci_system_deps: installed $(prometheus --version 2>&1 | head -n1)"
