#!/usr/bin/env bash
# Regenerates the Python code for protos/ into src/potato/ (committed).
# With --check, fails when the committed code differs from a fresh build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
out="src"
if [[ "${1:-}" == "--check" ]]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mapfile -t files < <(cd protos && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
"$PY" -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
if [[ "${1:-}" == "--check" ]]; then
  for f in $(cd "$out" && find potato -name '*.py' -o -name '*.pyi' | LC_ALL=C sort); do
    if ! cmp -s "$out/$f" "src/$f"; then
      echo "generated code drifted from protos: src/$f (run scripts/gen_protos.sh)" >&2
      exit 1
    fi
  done
  echo "generated code matches protos"
fi
