#!/usr/bin/env bash
# The local alerting stack's binaries: Debian's prometheus (with promtool), prometheus-alertmanager and
# prometheus-pushgateway. Idempotent (installs only what is missing), silent on success; on failure the last
# stderr line says what is missing and why. The stack itself is started by ct_pipeline.adapters.local_monitoring
# (bound to 127.0.0.1 on free ports); the Debian packages' own systemd services are not used and are stopped
# if apt started them (no systemd here: policy-rc.d keeps them from starting at all).
set -euo pipefail

declare -A PACKAGE_OF=(
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [prometheus-pushgateway]=prometheus-pushgateway
)
missing=()
for bin in "${!PACKAGE_OF[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$bin]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

fail() { printf '[monitoring-setup] cannot install %s: %s\n' "${missing[*]}" "$*" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || fail "no apt-get here; install them with your package manager"
[ "$(id -u)" = 0 ] || fail "apt-get needs root (run: sudo apt-get install -y ${missing[*]})"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Keep apt from starting the packages' daemons (on 0.0.0.0 and the default ports): the stack starts its own.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
fi
status=0
{ apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 \
  || { apt-get update -qq >>"$log" 2>&1 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; }; } \
  || status=$?
[ "$own_policy" = 1 ] && rm -f "$policy"
if [ "$status" != 0 ]; then
  tail -n 5 "$log" >&2
  fail "apt-get install failed (exit $status)"
fi
for bin in "${!PACKAGE_OF[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || fail "$bin is still not on PATH after installing ${PACKAGE_OF[$bin]}"
done
