#!/usr/bin/env bash
# One command from a fresh machine to a working .venv with the whole stack and icm installed.
# Idempotent: a second run compares a stamp of the inputs and returns in seconds.
# The stack goes in through scripts/install_stack.sh (the recipe of docs/install.md); the mmcv wheel
# (compiled CPU ops, ~15 min on 2 cores) is cached in $ICM_CACHE/wheels, outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${ICM_VENV:-$ROOT/.venv}
C="-c $ROOT/constraints.txt"

stamp_inputs() {
  { cat scripts/setup.sh scripts/install_stack.sh constraints.txt pyproject.toml; cat plugins/*/pyproject.toml 2>/dev/null || true; } \
    | sha256sum | cut -c1-16
}
STAMP=$VENV/.icm-setup-stamp
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_inputs)" ]; then
  echo "setup: .venv is up to date ($(stamp_inputs))"
  exit 0
fi

log() { echo "setup: $*" >&2; }
# A fresh stack is ~7 GB in the venv (torch's CUDA build) plus pip's downloads; a full disk otherwise
# surfaces as an OSError deep inside pip. Checked only when torch is not installed yet.
NEED_GB=${ICM_SETUP_NEED_GB:-10}
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch" 2>/dev/null; }; then
  mkdir -p "$(dirname "$VENV")"
  FREE_GB=$(( $(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}') / 1048576 ))
  if [ "$FREE_GB" -lt "$NEED_GB" ]; then
    log "needs about $NEED_GB GB free for the stack, $(dirname "$VENV") has $FREE_GB GB (set ICM_SETUP_NEED_GB to override)"
    exit 1
  fi
fi
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
PY=$VENV/bin/python
PIP="$PY -m pip install -q --disable-pip-version-check"

bash scripts/install_stack.sh "$PY"

# Debian's chromium renders report.html in the browser test; only when we may install system packages.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "chromium (headless browser for the report test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || log "could not install chromium; the browser test will be skipped"
fi

log "icm core, icm-openmmlab, plugins and test tools"
# one resolve: the task plugins require icm-openmmlab, which is here, not on an index
EDITABLE=()
for p in plugins/*/; do
  if [ -f "$p/pyproject.toml" ]; then EDITABLE+=(-e "$p"); fi
done
$PIP $C -e "$ROOT[learned,test]" "${EDITABLE[@]}"
stamp_inputs > "$STAMP"
log "done"
