#!/usr/bin/env bash
# The Python package: system packages (scripts/setup.sh), then `pip install .` into a virtual
# environment (default build-python/venv; --venv DIR for another, --user-python to install into
# the python3 on PATH instead). --test also runs the Python tests (tests/python) against it and
# the HTTP server's tests (tests/server: a real client against `build/stdit serve`).
# Usage: scripts/python.sh [--venv DIR | --user-python] [--test] [--cpu-only]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=build-python/venv
test=0
cpu_only=0
while (($#)); do
  case "$1" in
    --venv) venv=$2; shift ;;
    --user-python) venv="" ;;
    --test) test=1 ;;
    --cpu-only) cpu_only=1 ;;
    *) echo "python.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
scripts/setup.sh
py=python3
if [[ -n $venv ]]; then
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  py=$(cd "$venv" && pwd)/bin/python
fi
args=()
((cpu_only)) && args+=(-C cmake.define.STDIT_CUDA=OFF)
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q . ${args[@]+"${args[@]}"}
echo "python.sh: installed: $("$py" -c 'import stdit; print(stdit.__file__)')"
if ((test)); then
  "$py" -m pip install -q pytest tqdm
  [[ -x build/stdit ]] || scripts/build.sh
  (cd /tmp && STDIT_BIN="$OLDPWD/build/stdit" "$py" -m pytest -q "$OLDPWD/tests/python" "$OLDPWD/tests/server")
fi
