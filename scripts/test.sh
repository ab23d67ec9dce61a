#!/usr/bin/env bash
# One command: set up a fresh machine and run every check and test:
# buf lint + breaking, generated-code drift, ruff, mypy --strict, pytest.
# POTATO_HYPOTHESIS_PROFILE=deep, POTATO_SLOW=1 and POTATO_FAULTS=1 (the fault suite at
# full size; POTATO_FAULTS_REPORT=FILE collects its table) turn on the long runs; they
# reach pytest through the environment. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
export GRPC_ENABLE_FORK_SUPPORT=false

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "buf lint"
buf lint
step "buf breaking"
if git rev-parse -q --verify HEAD~1 >/dev/null 2>&1 && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  buf breaking --against ".git#ref=HEAD~1"
else
  echo "no earlier commit with buf.yaml: nothing to compare"
fi
step "buf breaking: v1 is frozen (against its first release, protos/images/potato_runs_v1.binpb)"
buf breaking --against protos/images/potato_runs_v1.binpb
step "generated code matches protos"
PYTHON=.venv/bin/python scripts/gen_protos.sh --check
step "ruff"
ruff check src tests scripts
step "mypy --strict"
mypy
step "pytest"
python -m pytest "$@"
