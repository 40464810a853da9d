#!/usr/bin/env bash
# Jobs of several processes under a real mpirun (Debian's Open MPI; gnmt built with the `mpi`
# feature): 2 ranks train like 1 process, a killed rank ends the job and the rerun resumes,
# a job's translation equals one process's. Speed figures are taken by bench/distributed.sh,
# not here (CI machines are shared).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun > /dev/null || ! dpkg -s libopenmpi-dev libclang-dev > /dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q > /dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
    openmpi-bin libopenmpi-dev libclang-dev pkgconf > /dev/null
fi
mpirun --version | head -1
cargo test --release -p gnmt-dist --features mpi
cargo test --release -p gnmt-cli --features mpi --test distributed
