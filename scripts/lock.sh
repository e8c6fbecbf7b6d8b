#!/usr/bin/env bash
# Regenerate the locks scripts/setup.sh installs from by default: every package orthopatch needs, pinned with its
# hashes, for CPython 3.11 on x86_64 Linux with PyTorch's CPU build.
#   requirements-lock-dev.txt  `pip install -e .[dev]` (tests, docs, lint), resolved first
#   requirements-lock.txt      `pip install -e .`, the same versions (resolved under the dev lock)
# The versions already locked are kept where pyproject.toml's ranges and the pins in scripts/lock-pins.txt allow
# (a new requirement adds its own, newest); LOCK_UPGRADE=1 takes the newest releases instead. Needs uv (`pip install uv`)
# and a directory holding the torch CPU wheel (TORCH_WHEELS, default /opt/wheels; it is the wheel that
# https://download.pytorch.org/whl/cpu serves).
set -euo pipefail
cd "$(dirname "$0")/.."
compile() {  # output, then uv's own options
  local out="$1"
  shift
  if [ -z "${LOCK_UPGRADE:-}" ] && [ -f "$out" ]; then cp "$out" "$out.tmp"; else rm -f "$out.tmp"; fi  # preferences
  "${UV:-uv}" pip compile pyproject.toml --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --find-links "${TORCH_WHEELS:-/opt/wheels}" \
    -c scripts/lock-pins.txt --no-header --quiet --output-file "$out.tmp" "$@"
}
compile requirements-lock-dev.txt --extra dev
mv requirements-lock-dev.txt.tmp requirements-lock-dev.txt
compile requirements-lock.txt -c requirements-lock-dev.txt
mv requirements-lock.txt.tmp requirements-lock.txt
for lock in requirements-lock.txt requirements-lock-dev.txt; do
  echo "lock: $lock ($(grep -c '^[A-Za-z0-9_.-]*==' "$lock") packages)"
done
