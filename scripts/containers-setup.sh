#!/usr/bin/env bash
# Container engine for the model-service images on one machine, without a Docker daemon and without pulling
# anything (see /work/shared/platform-notes.md): podman (runc) + buildah + skopeo, a locally built Debian
# bookworm base image (python3 = 3.11), Debian's docker-registry on 127.0.0.1:5000 and `podman system service`
# on a unix socket (the Docker API the `docker` SDK talks to). Idempotent: every step checks before it acts.
#
#   eval "$(scripts/containers-setup.sh)"      # or: scripts/containers-setup.sh && . "$CTPIPE_HOME/containers/env"
#   scripts/containers-setup.sh --stop         # stop the registry + podman service started here, release the storage
#
# stdout carries only the `export ...` lines (also written to $CTPIPE_HOME/containers/env); progress on stderr.
# Exit 0 = ready; exit 1 = it cannot be set up here, the last stderr line says why (callers degrade on it).
#
# Environment: CTPIPE_HOME (default ./.ctpipe), CTPIPE_IMAGE_REGISTRY (127.0.0.1:5000, must be a loopback
# address: this script runs the registry), CTPIPE_IMAGE_BASE (localhost/ct-pipeline/bento-base:bookworm-py3.11),
# DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

CTPIPE_HOME=$(mkdir -p "${CTPIPE_HOME:-$PWD/.ctpipe}" && cd "${CTPIPE_HOME:-$PWD/.ctpipe}" && pwd)
DIR="$CTPIPE_HOME/containers"
CACHE="$CTPIPE_HOME/cache"
REGISTRY="${CTPIPE_IMAGE_REGISTRY:-127.0.0.1:5000}"
BASE_IMAGE="${CTPIPE_IMAGE_BASE:-localhost/ct-pipeline/bento-base:bookworm-py3.11}"
ROOTFS_IMAGE="localhost/ct-pipeline/debian:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SOCK="$DIR/podman.sock"
ROOTFS_TAR="$CACHE/debian-bookworm-minbase-py3.11.tar"
# What the base carries: python3 (3.11 on bookworm) + what BentoML's debian Dockerfile installs anyway
# (its first RUN: ca-certificates gnupg2 bash build-essential git), so that RUN is a quick no-op.
BASE_PACKAGES="python3,python3-pip,ca-certificates,gnupg2,bash,build-essential,git,passwd"
PACKAGES=(podman buildah skopeo runc debootstrap docker-registry)

log() { printf '[containers-setup] %s\n' "$*" >&2; }
# On failure: no env file (callers must not use a stale one), the reason in $DIR/unavailable.
die() {
  printf '%s\n' "$*" >"$DIR/unavailable"
  printf '[containers-setup] cannot set up containers: %s\n' "$*" >&2
  exit 1
}
mkdir -p "$DIR" "$CACHE" "$DIR/run"

stop() {
  for name in registry podman-service; do
    pidfile="$DIR/run/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")" && log "stopped $name (pid $(cat "$pidfile"))"
    fi
    rm -f "$pidfile"
  done
  # containers/storage keeps its overlay directory bind-mounted; release it so the folder can be removed
  if command -v mountpoint >/dev/null && mountpoint -q "$DIR/storage/overlay" 2>/dev/null; then
    umount "$DIR/storage/overlay" && log "unmounted $DIR/storage/overlay"
  fi
}
if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi
rm -f "$DIR/env" "$DIR/unavailable"

# 1. packages (apt-get needs root)
missing=()
for bin in podman buildah skopeo runc debootstrap docker-registry; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; installing them needs root (apt-get install -y ${PACKAGES[*]})"
  log "installing ${PACKAGES[*]} (apt-get, ~15 s)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq "${PACKAGES[@]}"; } >"$DIR/apt.log" 2>&1 \
    || die "apt-get install ${PACKAGES[*]} failed (log: $DIR/apt.log)"
fi

case "$REGISTRY" in
  127.0.0.1:* | localhost:*) local_registry=1 insecure=true ;;
  *) local_registry=0 insecure=false ;;
esac

# 2. configuration through CONTAINERS_* files (nothing in /etc changes). runc, not crun ("cgroups in hybrid
#    mode not supported"); explicit ulimits (podman's defaults fail with "setrlimit: Operation not permitted").
cat >"$DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
cat >"$DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$DIR/runroot"
graphroot = "$DIR/storage"
EOF
cat >"$DIR/registries.conf" <<EOF
unqualified-search-registries = []

[[registry]]
location = "$REGISTRY"
insecure = $insecure
EOF
export CONTAINERS_CONF="$DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$DIR/registries.conf"

podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null 2>"$DIR/podman-info.log" \
  || die "podman does not work here: $(tail -1 "$DIR/podman-info.log")"

# 3. base image, built locally once (nothing can be pulled); the debootstrapped rootfs is cached as a tarball
if ! podman image exists "$BASE_IMAGE"; then
  if ! podman image exists "$ROOTFS_IMAGE"; then
    if [ ! -s "$ROOTFS_TAR" ]; then
      tmp=$(mktemp -d "$CACHE/rootfs.XXXXXX")
      log "debootstrap bookworm (minbase + $BASE_PACKAGES) from $MIRROR (~1-2 min, once)"
      debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$tmp/rootfs" "$MIRROR" \
        >"$DIR/debootstrap.log" 2>&1 || { rm -rf "$tmp"; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
      rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
      tar -C "$tmp/rootfs" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
      rm -rf "$tmp"
    fi
    log "importing $ROOTFS_TAR as $ROOTFS_IMAGE"
    podman import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$ROOTFS_IMAGE" >/dev/null
  fi
  log "building $BASE_IMAGE (uv for BentoML's Dockerfile; PyPI through --network=host)"
  ctx=$(mktemp -d)
  mkdir -p "$ctx/local-ca"
  # The base trusts what this host trusts beyond Debian's CA set (e.g. the CA of a TLS-intercepting egress
  # proxy in front of PyPI): image builds install from PyPI with it. Nothing is copied when there is none.
  for crt in /usr/local/share/ca-certificates/*.crt; do [ -f "$crt" ] && cp "$crt" "$ctx/local-ca/"; done
  cat >"$ctx/Containerfile" <<EOF
FROM $ROOTFS_IMAGE
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
# uv reads SSL_CERT_FILE (its default is its own bundled roots, which would ignore the CAs above).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8 LC_ALL=C.UTF-8
# Debian marks its python as externally managed; uv is what BentoML's Dockerfile installs with.
RUN python3 -m pip install --no-cache-dir --break-system-packages uv && uv --version
LABEL org.opencontainers.image.title="ct-pipeline bento base" \\
      org.opencontainers.image.description="Debian bookworm minbase, python3 3.11, uv; built locally by scripts/containers-setup.sh" \\
      org.opencontainers.image.base.name="debian:bookworm"
CMD ["/bin/bash"]
EOF
  podman build --network=host -q -t "$BASE_IMAGE" "$ctx" >"$DIR/base-build.log" 2>&1 \
    || { rm -rf "$ctx"; die "building $BASE_IMAGE failed (log: $DIR/base-build.log)"; }
  rm -rf "$ctx"
fi

# 4. the registry (plain HTTP on a loopback address); another registry is the user's to run
[ "$local_registry" = 1 ] || log "CTPIPE_IMAGE_REGISTRY=$REGISTRY is not local: not starting a registry"
if [ "$local_registry" = 1 ] && ! curl -sf -o /dev/null "http://$REGISTRY/v2/"; then
  mkdir -p "$DIR/registry"
  cat >"$DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  log "starting docker-registry on $REGISTRY (storage $DIR/registry)"
  setsid nohup docker-registry serve "$DIR/registry.yml" >"$DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/registry.pid"
  for _ in $(seq 50); do curl -sf -o /dev/null "http://$REGISTRY/v2/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://$REGISTRY/v2/" || die "docker-registry did not answer on $REGISTRY (log: $DIR/registry.log)"
fi

# 5. podman's Docker-compatible API on a unix socket (what the docker SDK talks to)
if ! curl -sf -o /dev/null --unix-socket "$SOCK" http://d/_ping 2>/dev/null; then
  rm -f "$SOCK"
  log "starting podman system service on unix://$SOCK"
  setsid nohup podman system service --time=0 "unix://$SOCK" >"$DIR/podman-service.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/podman-service.pid"
  for _ in $(seq 100); do curl -sf -o /dev/null --unix-socket "$SOCK" http://d/_ping 2>/dev/null && break; sleep 0.1; done
  curl -sf -o /dev/null --unix-socket "$SOCK" http://d/_ping \
    || die "podman system service did not answer on $SOCK (log: $DIR/podman-service.log)"
fi

cat >"$DIR/env" <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF
export CONTAINERS_REGISTRIES_CONF=$CONTAINERS_REGISTRIES_CONF
export CTPIPE_DOCKER_HOST=unix://$SOCK
export CTPIPE_IMAGE_REGISTRY=$REGISTRY
export CTPIPE_IMAGE_BASE=$BASE_IMAGE
EOF
log "ready: registry http://$REGISTRY, Docker API unix://$SOCK, base image $BASE_IMAGE (env: $DIR/env)"
cat "$DIR/env"
