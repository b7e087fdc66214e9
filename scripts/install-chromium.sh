#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/e2e/test_report_browser.py).
# Idempotent: does nothing once /usr/bin/chromium exists. Installs Debian's package when
# run as root (as on CI and the dev machines); otherwise says what to run and fails.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-chromium: $CHROMIUM is missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
"$CHROMIUM" --version
