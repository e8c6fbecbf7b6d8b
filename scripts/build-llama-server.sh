#!/usr/bin/env bash
# Build llama.cpp's server (llama-server) for `orthopatch serve --engine llama.cpp`, once per machine.
#   scripts/build-llama-server.sh          build it (or find it already built) and print its path
#   scripts/build-llama-server.sh --path   print where it is or would be, build nothing
# The source is the llama.cpp that llama-cpp-python's source release carries (PyPI is where this machine can
# reach it), checked against the sha256 below. The build lands in a cache outside the checkout,
# ${ORTHOPATCH_CACHE:-~/.cache/orthopatch}/llama.cpp/<release>-<machine>/, so fresh clones on the same machine
# reuse it. It is built for this machine's CPU (GGML_NATIVE): about 8 minutes on 2 cores.
# A llama-server of your own (a release build, Homebrew's, a CUDA build) works as well: put it on PATH or set
# ORTHOPATCH_LLAMA_SERVER to it; orthopatch asks it for its version and needs one with per-request LoRA.
set -euo pipefail

release="0.3.36"
sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
cache="${ORTHOPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orthopatch}/llama.cpp/$release-$(uname -m)"
binary="$cache/bin/llama-server"

case "${1:-}" in
  --path) echo "$binary"; exit 0 ;;
  "") ;;
  *) echo "build-llama-server: unknown option $1 (known: --path)" >&2; exit 2 ;;
esac

if [ -x "$binary" ]; then echo "$binary"; exit 0; fi
for tool in cmake make c++; do
  command -v "$tool" >/dev/null || { echo "build-llama-server: $tool is needed to build llama-server" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "build-llama-server: fetching llama-cpp-python $release's source (llama.cpp inside)" >&2
"${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$release" -d "$work" \
  2> >(grep -v "^WARNING: Location 'file://" >&2)
archive="$work/llama_cpp_python-$release.tar.gz"
echo "$sha256  $archive" | sha256sum --check --quiet
tar xzf "$archive" -C "$work"
source_dir="$work/llama_cpp_python-$release/vendor/llama.cpp"

echo "build-llama-server: building llama-server (about 8 minutes on 2 cores)" >&2
cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -50 "$work/build.log" >&2; exit 1; }

# into the cache under a temporary name, then renamed: an interrupted build leaves no half-written binary
mkdir -p "$cache/bin"
cp "$work/build/bin/llama-server" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$binary"
