#!/usr/bin/env bash
# System packages the tests need (Debian/Ubuntu), one line per package. Idempotent: present ones are skipped.
set -euo pipefail
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive

# PostgreSQL server: tests/test_tune.py starts a throwaway cluster for two workers sharing one Optuna study.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ($SUDO apt-get update && $SUDO apt-get install -y postgresql)

# Chromium: tests/test_page.py drives the web page of `emotune serve` in a real headless browser.
command -v chromium >/dev/null 2>&1 || ($SUDO apt-get update && $SUDO apt-get install -y chromium)
