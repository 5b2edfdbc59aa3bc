#!/usr/bin/env bash
# Install the pinned stack icm runs on (torch, mmcv with compiled CPU ops, mmengine, mmdet, mmseg, mmpose,
# mmpretrain, compressai, xtcocotools) into the venv of PYTHON, the way docs/install.md tells a user to.
#   bash scripts/install_stack.sh /path/to/venv/bin/python
# Used by scripts/setup.sh (the dev venv) and scripts/check_wheels.sh (a venv without the checkout).
# The mmcv wheel (compiled CPU ops, ~15 min on 2 cores) is built once and cached in $ICM_CACHE/wheels.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:?usage: install_stack.sh PYTHON}
ICM_CACHE=${ICM_CACHE:-$HOME/.cache/icm}
WHEELS=$ICM_CACHE/wheels
MMCV_VERSION=2.1.0
C="-c $ROOT/constraints.txt"
PIP="$PY -m pip install -q --disable-pip-version-check"
log() { echo "install_stack: $*" >&2; }

log "torch + build tools"
$PIP $C torch torchvision setuptools wheel ninja numpy

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
$PIP $C mmengine mmdet mmsegmentation mmpretrain ftfy regex pycocotools shapely terminaltables prettytable cython
# mmpose hard-requires chumpy, which it never imports. chumpy's sdist imports pip in its setup.py, which
# current pip's isolated build hides; built without isolation it installs, and then anything that depends
# on mmpose (icm-plugin-mmpose) resolves normally.
if ! $PY -m pip show -q chumpy >/dev/null 2>&1; then
  $PIP $C --no-build-isolation chumpy
fi
# The xtcocotools wheel is built against numpy 1.x; build it from source against numpy 2.
if ! $PY -c "import xtcocotools.coco" 2>/dev/null; then
  $PIP $C --no-binary xtcocotools --no-build-isolation xtcocotools
fi
$PIP $C mmpose
# compressai declares numpy<2 but runs on numpy 2: it goes in with --no-deps, its real dependencies are
# icm's `learned` extra. `pip check` complains about exactly this, expected.
$PIP $C --no-deps compressai
$PIP $C torchvision einops pandas torch-geometric typing-extensions pytorch-msssim tqdm scipy matplotlib pybind11 tomli requests
log "done"
