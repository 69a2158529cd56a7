#!/usr/bin/env bash
# A Docker engine of our own, for machines without a running one (CI, the development machines): Debian's
# docker.io daemon, as root, on its own socket, data root and exec root, with no bridge network (containers get
# `--network none` or `--network host`) and no iptables rules. Stopped by its PID, never by name.
#
#   sudo bash scripts/docker-engine.sh install   # apt-get install docker.io (and debootstrap, for base images;
#                                                # docker-registry, for tests/test_registry.py's push)
#   sudo bash scripts/docker-engine.sh start     # start the daemon unless it answers; prints DOCKER_HOST=...
#   sudo bash scripts/docker-engine.sh stop      # stop the daemon this script started (by its pidfile)
#   bash scripts/docker-engine.sh status         # exit 0 when it answers
#   eval "$(bash scripts/docker-engine.sh env)"  # DOCKER_HOST for the docker CLI and the Python SDK
#
# Paths (environment): POLYDISTILL_CACHE_DIR (/var/cache/polydistill; the data root lives under it, so images
# and build layers survive from one run to the next) and POLYDISTILL_DOCKER_RUN (/run/polydistill-docker: socket,
# pidfile, exec root; short, because containerd's socket paths must stay under 108 bytes).
set -euo pipefail

CACHE_DIR="${POLYDISTILL_CACHE_DIR:-/var/cache/polydistill}"
RUN_DIR="${POLYDISTILL_DOCKER_RUN:-/run/polydistill-docker}"
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$RUN_DIR/dockerd.log"
DATA_ROOT="$CACHE_DIR/docker"
START_TIMEOUT_S="${POLYDISTILL_DOCKER_START_TIMEOUT:-60}"

say() { echo "docker-engine: $*" >&2; }

answers() { docker -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

need_root() {
  if [ "$(id -u)" != 0 ]; then say "$1 needs root (run it with sudo)"; exit 1; fi
}

cmd_install() {
  need_root install
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v docker-registry >/dev/null; then
    say "dockerd, debootstrap and docker-registry present"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's service does not start (no init system here); the daemon is started by `start` below.
  apt-get install -y -qq docker.io debootstrap docker-registry >/dev/null
  say "installed $(dockerd --version)"
}

cmd_start() {
  if answers; then say "already running on $SOCK"; echo "DOCKER_HOST=unix://$SOCK"; return; fi
  need_root start
  command -v dockerd >/dev/null || { say "no dockerd: run 'sudo bash $0 install' first"; exit 1; }
  mkdir -p "$RUN_DIR" "$DATA_ROOT"
  rm -f "$SOCK"
  # setsid: the daemon outlives this script and a Ctrl-C in the calling shell.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false \
    -H "unix://$SOCK" --data-root "$DATA_ROOT" --exec-root "$RUN_DIR/exec" --pidfile "$PIDFILE" \
    >"$LOG" 2>&1 < /dev/null &
  local pid=$! waited=0
  # Wait for the API, not for a fixed time; give up early when the daemon died.
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then say "dockerd exited; its log:"; tail -n 20 "$LOG" >&2; exit 1; fi
    if [ "$waited" -ge "$START_TIMEOUT_S" ]; then say "dockerd did not answer in ${START_TIMEOUT_S}s ($LOG)"; exit 1; fi
    sleep 1; waited=$((waited + 1))
  done
  say "started dockerd (pid $pid, data root $DATA_ROOT, log $LOG)"
  echo "DOCKER_HOST=unix://$SOCK"
}

cmd_stop() {
  [ -f "$PIDFILE" ] || { say "not running (no $PIDFILE)"; return; }
  local pid waited=0
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops its containers and containerd first; wait for it rather than for a fixed time.
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$waited" -ge 60 ]; then say "dockerd (pid $pid) ignored SIGTERM for 60s; killing it"; kill -KILL "$pid"; fi
      sleep 1; waited=$((waited + 1))
    done
    say "stopped dockerd (pid $pid)"
  fi
  rm -f "$PIDFILE" "$SOCK"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if answers; then echo "running on $SOCK"; else echo "not running"; exit 1; fi ;;
  env) echo "export DOCKER_HOST=unix://$SOCK" ;;
  *) say "usage: $0 install|start|stop|status|env"; exit 2 ;;
esac
