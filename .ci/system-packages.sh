#!/usr/bin/env bash
# Debian packages the tests need: Chromium, to open report.html headless (tests/test_report.py).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
chromium --version
