#!/usr/bin/env bash
# Builds the CUDA binaries on a machine with no GPU and no CUDA package: CUDA 13.0's compiler
# and libraries from PyPI into target/cuda-toolkit (once; about 1.2 GB), link-time stubs the
# wheels lack, then `gnmt` and `translate` with the `cuda` feature for sm_90 (H100/H200),
# stripped and xz-compressed into target/gpu/ with the Multi30k files check.sh reads (the GPU
# machine receives at most 64 MiB: about 20 MiB here).
#
#   bench/gpu/build.sh           # build
#   bench/gpu/build.sh --check   # cargo check --features cuda only (what CI can afford)
#
# The binaries need libcuda.so.1 (the driver), libcublas/libcublasLt.so.13, libcudart.so.13
# and libcurand.so.10 at run time; bench/gpu/check.sh finds them in the GPU machine's wheels.
# The stub libcuda.so made here is for the link step only and never on a run-time path.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
mode=${1:-build}
tk=${GNMT_CUDA_TOOLKIT:-$root/target/cuda-toolkit}
cuda=$tk/nvidia/cu13

# 1. The toolkit. Pinned to 13.0: the GPU machines' driver (580) JIT-compiles PTX from CUDA
#    13.0 and may refuse a newer nvcc's.
if [ ! -x "$cuda/bin/nvcc" ]; then
    # pip from a virtual environment of its own: Debian's Python may have none, or refuse.
    python3 -m venv "$tk-venv"
    "$tk-venv/bin/pip" install --quiet --disable-pip-version-check --target "$tk" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
        "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand"
fi
test -x "$cuda/bin/nvcc" || { echo "build.sh: no nvcc in $cuda/bin" >&2; exit 1; }
# NCCL, for the `nccl` feature's link step, in a folder of its own: pip --target replaces
# the shared `nvidia/` folder of an earlier install.
nccl=${GNMT_NCCL_DIR:-$tk-nccl}
if ! find "$nccl" -name 'libnccl.so.*' -type f 2> /dev/null | grep -q .; then
    "$tk-venv/bin/pip" install --quiet --disable-pip-version-check --target "$nccl" \
        "nvidia-nccl-cu13==2.*"
fi

# 2. What the linker looks for: unversioned libX.so names (the wheels ship only libX.so.N),
#    and a stub libcuda.so with one empty function per driver entry point of cuda.h.
links=$tk/link
stub=$tk/stub
mkdir -p "$links" "$stub"
for lib in cublas cublasLt cudart nvrtc curand nccl; do
    found=$(find "$tk/nvidia" "$nccl" -name "lib$lib.so.*" -type f | sort | head -n 1)
    test -n "$found" || { echo "build.sh: lib$lib.so.* not found under $tk/nvidia" >&2; exit 1; }
    ln -sf "$found" "$links/lib$lib.so"
done
if [ ! -f "$stub/libcuda.so" ]; then
    gcc -E -P -I "$cuda/include" "$cuda/include/cuda.h" \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
        | sed 's/.*/void &(void) {}/' > "$stub/libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda.c"
fi

# 3. The build.
export PATH=$cuda/bin:$PATH CUDA_HOME=$cuda CUDA_PATH=$cuda CUDA_ROOT=$cuda
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stub -L native=$links"
# A target folder of its own: other RUSTFLAGS would rebuild the CPU build's artifacts.
target=${GNMT_GPU_TARGET_DIR:-$root/target/gpu-build}
# translate without the built-in model (-m is given on the GPU machine): 24 MB less to carry.
features=(--no-default-features --features cuda)
if [ "$mode" = --check ]; then
    cargo check --locked -p gnmt-cli "${features[@]}" --target-dir "$target"
    echo "build.sh: cargo check --features cuda passed"
    # NCCL's all-reduce needs the mpi feature too, hence Open MPI's headers (as .ci/run installs).
    if command -v mpicc > /dev/null; then
        cargo check --locked -p gnmt-cli --no-default-features --features nccl --target-dir "$target"
        echo "build.sh: cargo check --features nccl (cuda, mpi) passed"
    else
        echo "build.sh: cargo check --features nccl skipped: no Open MPI (mpicc) here"
    fi
    exit 0
fi
cargo build --locked --release -p gnmt-cli --bins "${features[@]}" --target-dir "$target"
mkdir -p target/gpu/multi30k
# What bench/gpu/check.sh reads there, which has no ../shared: Multi30k's training, validation
# and test_2016_flickr files (English and German; 4.1 MB), never into the repository itself.
data=${GNMT_DATA_DIR:-$root/../shared/data/multi30k}
for f in train val test_2016_flickr; do
    cp "$data/$f.en" "$data/$f.de" target/gpu/multi30k/
done
for bin in gnmt translate; do
    strip -o "target/gpu/$bin" "$target/release/$bin"
    xz -T0 -9 -f -k "target/gpu/$bin"
    rm "target/gpu/$bin"
done
ls -l target/gpu
