#!/usr/bin/env bash
# One command from a fresh machine to a working .venv with the whole stack and icm installed.
# Idempotent: a second run compares a stamp of the inputs and returns in seconds.
# The mmcv wheel (compiled CPU ops, ~15 min on 2 cores) is cached in $ICM_CACHE/wheels, outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${ICM_VENV:-$ROOT/.venv}
ICM_CACHE=${ICM_CACHE:-$HOME/.cache/icm}
WHEELS=$ICM_CACHE/wheels
MMCV_VERSION=2.1.0
C="-c $ROOT/constraints.txt"

stamp_inputs() {
  { cat scripts/setup.sh constraints.txt pyproject.toml; cat plugins/*/pyproject.toml 2>/dev/null || true; } \
    | sha256sum | cut -c1-16
}
STAMP=$VENV/.icm-setup-stamp
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_inputs)" ]; then
  echo "setup: .venv is up to date ($(stamp_inputs))"
  exit 0
fi

log() { echo "setup: $*" >&2; }
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
PY=$VENV/bin/python
PIP="$PY -m pip install -q --disable-pip-version-check"

log "torch + build tools"
$PIP $C torch torchvision setuptools wheel ninja

MMCV_WHEEL=$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$MMCV_WHEEL" ]; then
  log "building mmcv $MMCV_VERSION with compiled CPU ops (about 15 minutes, once; cached in $WHEELS)"
  BUILD=$(mktemp -d)
  $PY -m pip download -q --no-deps --no-binary :all: -d "$BUILD" mmcv==$MMCV_VERSION
  tar xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
  # torch 2.14 headers need C++20; mmcv's setup.py hard-codes c++14/17.
  sed -i 's/-std=c++1[47]/-std=c++20/g' "$BUILD"/mmcv-$MMCV_VERSION/setup.py
  mkdir -p "$WHEELS"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PY -m pip wheel -q --no-deps --no-build-isolation \
    -w "$BUILD/out" "$BUILD"/mmcv-$MMCV_VERSION
  # rename into place so a killed build never leaves a half-written wheel in the cache
  for w in "$BUILD"/out/mmcv-*.whl; do mv "$w" "$WHEELS/"; done
  MMCV_WHEEL=$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl | head -n1)
  rm -rf "$BUILD"
fi
log "mmcv from $MMCV_WHEEL"
$PIP $C "$MMCV_WHEEL"

log "OpenMMLab stack"
$PIP $C mmengine mmdet mmsegmentation ftfy regex pycocotools shapely terminaltables prettytable
# mmpose hard-requires chumpy (never imported, fails to build); compressai declares numpy<2 but runs on numpy 2.
# So these three go in with --no-deps and their real dependencies are listed by hand; `pip check` complains, expected.
$PIP $C --no-deps mmpose mmpretrain compressai
$PIP $C json-tricks munkres importlib-metadata mat4py modelindex einops pytorch-msssim pandas requests torch-geometric pybind11 tomli cython tqdm scipy matplotlib
# The xtcocotools wheel is built against numpy 1.x; build from source against numpy 2.
if ! $PY -c "import xtcocotools.coco" 2>/dev/null; then
  $PIP $C --no-binary xtcocotools --no-build-isolation xtcocotools
fi

# Debian's chromium renders report.html in the browser test; only when we may install system packages.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "chromium (headless browser for the report test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || log "could not install chromium; the browser test will be skipped"
fi

log "icm core, plugins and test tools"
$PIP $C -e "$ROOT[test]"
for p in plugins/*/; do
  if [ -f "$p/pyproject.toml" ]; then $PIP $C -e "$p"; fi
done
stamp_inputs > "$STAMP"
log "done"
