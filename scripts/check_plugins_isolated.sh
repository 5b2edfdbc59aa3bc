#!/usr/bin/env bash
# Evidence that each task plugin works on its own: for every plugins/*/, a fresh venv gets the core
# and that one plugin (nothing else of icm), and the plugin's own tests run there.
# The heavy stack comes from a base venv ($ICM_CACHE/isolation-base) that holds the pinned stack but
# no icm package at all; each fresh venv sees it through a .pth file, so nothing big is reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ICM_CACHE=${ICM_CACHE:-$HOME/.cache/icm}
export ICM_CONFIGS=$ROOT/configs  # the shipped configs and weights live in the repo, not in the wheel
BASE=$ICM_CACHE/isolation-base
if [ ! -x "$BASE/bin/python" ]; then
  echo "building the base venv (stack only) in $BASE"
  python3 -m venv "$BASE"
  # reuse the project venv's site-packages minus every icm distribution, via a filtered copy of its listing
  "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(icm|icm-plugin-)' > "$BASE/requirements.txt"
  "$BASE/bin/python" -m pip install -q --no-deps -r "$BASE/requirements.txt" -f "$ICM_CACHE/wheels"
fi
# as in setup.sh: the xtcocotools wheel is built against numpy 1.x, so it is built from source
if ! "$BASE/bin/python" -c "import xtcocotools._mask" 2>/dev/null; then
  "$BASE/bin/python" -m pip install -q --force-reinstall --no-deps --no-binary xtcocotools --no-build-isolation xtcocotools
fi
BASE_SITE=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
status=0
for plugin in plugins/*/; do
  name=$(basename "$plugin")
  venv=$(mktemp -d)/venv
  python3 -m venv "$venv"
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$BASE_SITE" > "$site/icm-isolation-base.pth"
  "$venv/bin/python" -m pip install -q --no-deps "$ROOT" "$ROOT/$plugin" 2>/dev/null
  tasks=$(cd /tmp && "$venv/bin/python" -m icm tasks --json | "$venv/bin/python" -c "import json,sys; print(','.join(sorted(t['name']+'@'+t['plugin'] for t in json.load(sys.stdin))))")
  if (cd "$ROOT/$plugin" && "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir . tests > "$venv/../pytest.log" 2>&1); then
    echo "$name: alone in a fresh venv -> tasks [$tasks]; tests: $(tail -n1 "$venv/../pytest.log")"
  else
    echo "$name: FAILED ($(tail -n1 "$venv/../pytest.log"))"; status=1
  fi
done
exit $status
