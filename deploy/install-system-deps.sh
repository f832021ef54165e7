#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Prometheus' server and promtool
# (Debian package `prometheus`), used to check the metrics exposition, the Prometheus
# configuration and alert rules, and to scrape the services in an integration test.
#
# Idempotent, and instant when everything is there: apt-get runs only when `promtool` or
# the server is missing. `make test` runs it (target system-deps).
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
# Chromium (Debian package chromium) for the dashboard's browser test, driven by
# Playwright's Python package with executable_path=/usr/bin/chromium (never
# `playwright install`, which downloads a browser and fails here).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
packages=()
case " ${missing[*]} " in *" promtool "* | *" prometheus "*) packages+=(prometheus) ;; esac
case " ${missing[*]} " in *" chromium "*) packages+=(chromium) ;; esac

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: ${missing[*]} missing and there is no apt-get here:" \
        "install Prometheus 2.x (server and promtool) by hand" >&2
    exit 1
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-system-deps: ${missing[*]} missing; as root, run:" \
            "apt-get update && apt-get install -y --no-install-recommends prometheus" >&2
        exit 1
    fi
}

echo "install-system-deps: installing the Debian packages ${packages[*]} (for ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
# The package would start a Prometheus service on port 9090; the tests start their own.
# A policy-rc.d answering 101 stops any service from starting during the install.
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created=1
fi
cleanup() { if [ "$created" -eq 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ] && [ -x /usr/bin/chromium ]
