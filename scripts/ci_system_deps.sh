#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv: Debian's `prometheus` package
# (prometheus + promtool, for the rule tests and the real-Prometheus test in tests/deploy) and
# Debian's `chromium` (the real-browser tests of the web page, tests/web, and `talkmesh bench web`:
# Playwright drives the system Chromium, it downloads no browser).
# Idempotent and quiet when everything is installed already. Needs root (apt-get); the tests
# that need these tools skip with a message pointing here when they are missing.
# kubectl (for `kubectl kustomize`) is expected on the CI image; it is not a Debian package.
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ci_system_deps: missing ${need[*]}; run as root to install (apt-get install ${need[*]})" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: just the Prometheus server, promtool and the browser (not node-exporter
# and friends). Prometheus's service is not started in containers (no init system); the tests run
# their own.
# Unique names (prometheus is listed twice when both of its tools are missing).
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v chromium >/dev/null
echo "ci_system_deps: installed ${pkgs[*]}"
