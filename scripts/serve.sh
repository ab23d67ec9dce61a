#!/usr/bin/env bash
# One command: set up a fresh machine and serve on an embedded PostgreSQL
# (or on $POTATO_DSN when set). Extra arguments go to `potato-runs serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/potato-runs serve "$@"
