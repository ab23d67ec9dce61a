#!/usr/bin/env bash
# Sets up a fresh machine for Potato Runs: PostgreSQL binaries (apt-get, when
# missing), a virtualenv in .venv with the project installed, and, with --dev,
# the test tools, buf (npm package @bufbuild/buf in .tools/) and promtool (apt-get,
# Debian package prometheus, when missing) and Citus 13.2.2 (built from
# ../shared/citus/ by its build.sh, when missing; the Citus tests, tests/citus/).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

have_pg() {
  command -v pg_ctl >/dev/null 2>&1 && return 0
  command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/pg_ctl" ]] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null && return 0
  return 1
}

have_btree_gist() {
  compgen -G "/usr/share/postgresql/*/extension/btree_gist.control" >/dev/null && return 0
  command -v pg_config >/dev/null 2>&1 && [[ -f "$(pg_config --sharedir)/extension/btree_gist.control" ]]
}

if ! have_pg || ! have_btree_gist; then
  log "installing PostgreSQL server binaries with apt-get"
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 || { log "need root or sudo to apt-get install postgresql"; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
STAMP=".venv/.installed-$DEV-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$STAMP" ]]; then
  log "installing Python packages"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  if [[ $DEV == 1 ]]; then
    .venv/bin/python -m pip install -q -e '.[dev]'
  else
    .venv/bin/python -m pip install -q -e .
  fi
  touch "$STAMP"
fi

if [[ $DEV == 1 && ! -x .tools/node_modules/.bin/buf ]]; then
  log "installing buf (npm @bufbuild/buf)"
  command -v npm >/dev/null 2>&1 || {
    log "npm missing: installing nodejs and npm with apt-get"
    SUDO=""; [[ "$(id -u)" != "0" ]] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  }
  mkdir -p .tools
  (cd .tools && npm install --silent --no-audit --no-fund --prefix . @bufbuild/buf@1.75.0 >/dev/null 2>&1)
fi

# promtool checks and unit-tests deploy/prometheus/rules.yml (tests/deploy/); Debian
# ships it in the `prometheus` package. Only the tool is wanted: where the package
# started its server (no policy-rc.d forbids it), stop it and keep it from starting again.
if [[ $DEV == 1 ]] && ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus) with apt-get"
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 || { log "need root or sudo to apt-get install prometheus"; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi
# Citus for the Citus tier (tests/citus/; its smoke subset runs by default): built from
# the source beside the repository by its own script, which is a no-op once installed.
CITUS_BUILD="../shared/citus/build.sh"
if [[ $DEV == 1 && -f $CITUS_BUILD ]] && ! compgen -G "/usr/lib/postgresql/*/lib/citus.so" >/dev/null; then
  log "building Citus with $CITUS_BUILD (about a minute)"
  SUDO=""
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 || { log "need root or sudo to build Citus"; exit 1; }
    SUDO="sudo"
  fi
  $SUDO bash "$CITUS_BUILD" >&2
fi
log "ready"
