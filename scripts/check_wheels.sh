#!/usr/bin/env bash
# docs/install.md, checked from outside the checkout:
#   1. build wheels of the core and every plugin from a clean copy of the tree;
#   2. install them BY NAME from that wheelhouse (--no-index --find-links) into a fresh venv in /tmp
#      that holds the pinned stack (torch, mmcv from the cached wheel, OpenMMLab, compressai) but not
#      this checkout; pip is current pip, so mmpose's chumpy requirement is resolved as documented;
#   3. from /tmp, with no ICM_CONFIGS: list codecs and tasks, code an image with every default codec, and
#      run `icm evaluate` with every task and the default codecs on a few images the package generates.
# The stack lives in a cached base venv ($ICM_CACHE/wheelcheck-base-<hash>, built once with
# scripts/install_stack.sh); each run's venv is new and sees the stack through a .pth file.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ICM_CACHE=${ICM_CACHE:-$HOME/.cache/icm}
BUILD_PY=${BUILD_PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/icm-wheelcheck.XXXXXX)
[ -n "${ICM_KEEP_WHEELCHECK:-}" ] || trap 'rm -rf "$WORK"' EXIT
WH=$WORK/wheelhouse
log() { echo "check_wheels: $*"; }
unset ICM_CONFIGS PYTHONPATH

log "1. wheels from a clean copy of the tree (tracked and new files, nothing ignored)"
mkdir -p "$WORK/src" "$WH"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
"$BUILD_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WH" "$WORK/src" "$WORK"/src/plugins/icm-openmmlab/ \
  "$WORK"/src/plugins/icm-plugin-*/ \
  2>&1 | grep -v "^WARNING: Location" || true
for w in "$WH"/*.whl; do
  log "   $(basename "$w")  $(du -k "$w" | cut -f1) KiB: $("$BUILD_PY" - "$w" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
data = [i for i in z.infolist() if i.filename.endswith((".pth", ".toml", ".py")) and "/model/" in i.filename
        or i.filename.startswith("icm/configs/") and not i.filename.endswith("__init__.py")]
print(f"{len(z.infolist())} files; shipped data: " + ", ".join(f"{i.filename} ({i.file_size // 1024} KiB)" for i in data))
EOF
)"
done

STACK_HASH=$(cat "$ROOT/constraints.txt" "$ROOT/scripts/install_stack.sh" | sha256sum | cut -c1-12)
BASE=$ICM_CACHE/wheelcheck-base-$STACK_HASH
if [ ! -f "$BASE/.complete" ]; then
  log "2a. building the stack venv $BASE once (current pip, scripts/install_stack.sh)"
  rm -rf "$BASE" && python3 -m venv "$BASE"
  "$BASE/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  bash "$ROOT/scripts/install_stack.sh" "$BASE/bin/python" 2>&1 | grep -v "^WARNING: Location" || true
  "$BASE/bin/python" -c "import torch, mmcv.ops, mmdet, mmseg, mmpose, mmpretrain, compressai, xtcocotools.coco"
  touch "$BASE/.complete"
fi

log "2b. the wheelhouse gets the declared dependencies the stack venv lacks (read from the wheels' metadata)"
MISSING=$("$BASE/bin/python" - "$WH" <<'EOF'
import sys, zipfile
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
ours = {"icm", "icm-openmmlab", "icm-plugin-mmdet", "icm-plugin-mmseg", "icm-plugin-mmpose", "icm-plugin-mmpretrain"}
missing = set()
for wheel in Path(sys.argv[1]).glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.name in ours or (req.marker and not req.marker.evaluate({"extra": "learned"})):
                continue
            try:
                if metadata.version(req.name) in req.specifier:
                    continue
            except metadata.PackageNotFoundError:
                pass
            missing.add(str(req).split(";")[0].strip())
print(" ".join(sorted(missing)))
EOF
)
log "   downloading: ${MISSING:-nothing}"
if [ -n "$MISSING" ]; then
  # shellcheck disable=SC2086
  "$BASE/bin/python" -m pip download -q --disable-pip-version-check -c "$ROOT/constraints.txt" -d "$WH" $MISSING \
    2>&1 | grep -v "^WARNING: Location" || true
fi

log "2c. a fresh venv outside the checkout; icm and the plugins installed by name, no index"
# icm-openmmlab is not named: the task plugins require it, so pip takes it from the wheelhouse
VENV=$WORK/venv
# --without-pip: pip and setuptools come with the stack (current pip); a venv's own older setuptools
# would shadow the stack's and fail torch's setuptools>=77 requirement
python3 -m venv --without-pip "$VENV"
"$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" | xargs -I{} sh -c \
  "\"$BASE/bin/python\" -c \"import sysconfig; print(sysconfig.get_paths()['purelib'])\" > {}/icm-stack.pth"
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-index --find-links "$WH" \
  "icm[learned]" icm-plugin-mmdet icm-plugin-mmseg icm-plugin-mmpose icm-plugin-mmpretrain 2>&1 \
  | grep -v "^WARNING: Location" | sed 's/^/    pip: /'

log "3. from /tmp, nothing of the checkout on the path"
RUN=$WORK/run && mkdir -p "$RUN" && cd "$RUN"
ICM="$VENV/bin/icm"
"$VENV/bin/python" - "$ROOT" <<'EOF'
import importlib, sys
root = sys.argv[1]
for name in ("icm", "icm.configs", "icm_openmmlab", "icm_mmdet", "icm_mmseg", "icm_mmpose", "icm_mmpretrain"):
    path = importlib.import_module(name).__file__
    assert not path.startswith(root), f"{name} imported from the checkout: {path}"
    print(f"    {name}: {path}")
EOF
"$ICM" --version
"$ICM" codecs --json > codecs.json
"$ICM" tasks --json > tasks.json
"$VENV/bin/python" - <<'EOF'
import json
codecs = {c["name"]: c for c in json.load(open("codecs.json"))}
want = ["jpeg", "webp", "avif", "jpegxl", "jpeg2000", "heif", "hevc", "icm-omni", "icm-omni-aux", "icm-omni-mse",
        "icm-hyperprior-mse", "bmshj2018-hyperprior", "icm-omni-features", "hevc-features"]
bad = {n: codecs.get(n, {}).get("unavailable_reason", "not registered") for n in want if not codecs.get(n, {}).get("available")}
assert not bad, f"codecs unavailable from the wheels: {bad}"
tasks = sorted(t["name"] for t in json.load(open("tasks.json")))
assert tasks == ["cls", "det", "inst", "panoptic", "pose", "seg"], tasks
print(f"    {len(codecs)} codecs ({sum(c['available'] for c in codecs.values())} available), tasks {tasks}")
EOF
"$ICM" data shapes --out data --train 0 --val 4 > /dev/null
for codec in jpeg webp avif hevc icm-omni icm-hyperprior-mse icm-omni-features; do
  case $codec in icm-omni|icm-omni-features) rate="--rate 0.5";; icm-hyperprior-mse) rate="-q 2";; hevc) rate="-q 32";; *) rate="-q 50";; esac
  "$ICM" encode "$(ls data/val/images/*.png | head -n1)" --codec $codec $rate -o bits/$codec > /dev/null
  "$ICM" decode bits/$codec/*.icm -o decoded_$codec.png
done
"$ICM" evaluate --dataset data --limit 3 --out results --no-progress > evaluate.log
"$VENV/bin/python" - <<'EOF'
import json
r = json.load(open("results/results.json"))
tasks = sorted(r["analysis"].keys() - {"_psnr"})
assert tasks == ["cls", "det", "inst", "panoptic", "pose", "seg"], tasks
codecs = sorted(r["analysis"]["det"]["curves"])
# icm-omni-features: its back ends load from the plugin wheels (a missing one would be a failure)
for need in ("icm-omni", "icm-hyperprior-mse", "icm-omni-features", "jpeg", "webp", "avif", "hevc"):
    assert need in codecs, (need, codecs)
c = r["counters"]
print(f"    icm evaluate from the wheels: tasks {tasks}, codecs {codecs}; {c['encodes']} encodes, "
      f"{len(c['failures'])} failures")
assert not c["failures"], c["failures"]
EOF
log "ok"
