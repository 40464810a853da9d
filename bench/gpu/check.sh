#!/usr/bin/env bash
# The prepared GPU check, for an NVIDIA H100/H200 machine with CUDA 13, PyTorch and the NVIDIA
# Python wheels but no Rust and no network, which receives this repository and target/gpu/
# (binaries and Multi30k, from bench/gpu/build.sh). In about 5 minutes:
#   1. every operation and the network on the GPU against the CPU reference (check-device),
#      with the reference kernels and with the fused ones (gnmt-cuda-kernels' where they exist),
#      in f32 and with bf16 and TF32 products;
#   2. gnmt-v2-4x1024 trained on Multi30k on the GPU; its first logged loss against the same
#      seeded run's on the CPU, and the loss falling;
#   3. training tokens/s on the GPU against PyTorch + cuDNN on the same GPU (f32/TF32 and bf16
#      autocast), same model and batch (bench train --torch), and with the fused kernels
#      (f32, bf16 and TF32 products);
#   4. test_2016_flickr decoded on the GPU (beam 5 and greedy), with the reference kernels and
#      with the fused ones: BLEU, sentences/s against the CPU at 2 threads, and translations
#      that do not depend on the batch size.
# Each step's output goes to $OUT/<step>.log, and what matters to $OUT/summary.md.
#
#   bench/gpu/check.sh            # the GPU machine
#   bench/gpu/check.sh --dry-run  # any machine: the CPU build (target/release), small sizes,
#                                 # the CPU as the device; checks this script, not a GPU
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
out=${OUT:-$root/target/gpu-check}
mkdir -p "$out"
summary=$out/summary.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "${1:-}" = --dry-run ]; then
    device=cpu bin=$root/target/release data=${GNMT_DATA_DIR:-$root/../shared/data/multi30k}
    preset=tiny train_steps=150 train_secs=60 compare_steps=5 bench_batch=16 threads=2
    lines=100
else
    device=cuda bin=$work/bin data=$root/target/gpu/multi30k
    preset=gnmt-v2-4x1024 train_steps=300 train_secs=90 compare_steps=5 bench_batch=128
    threads=$(nproc) lines=1000
    mkdir -p "$bin"
    for b in gnmt translate; do
        xz -dc "target/gpu/$b.xz" > "$bin/$b" && chmod +x "$bin/$b"
    done
    # The CUDA libraries of the installed wheels (cuBLAS, cuRAND, the runtime); the driver's
    # libcuda.so.1 is the system's.
    libs=$(python3 -c '
import glob, os, nvidia
dirs = {os.path.dirname(p) for r in nvidia.__path__ for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
gnmt=$bin/gnmt
if [ "$device" = cuda ]; then
    # bench train --torch runs bench/torch_baseline.sh, which uses the venv named here: the
    # system's Python, whose PyTorch is installed (there is no network to install one).
    mkdir -p "$work/venv/bin"
    ln -s "$(command -v python3)" "$work/venv/bin/python"
    export GNMT_TORCH_VENV=$work/venv
fi

{
    echo "# GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tail -n +2 || true
    grep -m1 'model name' /proc/cpuinfo
    echo '```'
} > "$summary"

failures=0
# step NAME TIMEOUT COMMAND...: runs COMMAND with its output in NAME.log; notes status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local verdict=ok
    if [ $rc -ne 0 ]; then
        verdict="FAILED (exit $rc$([ $rc -eq 124 ] && echo ", over ${limit}s"))"
        failures=$((failures + 1))
    fi
    printf '\n## %s: %s in %ss\n\n    %s\n' "$name" "$verdict" $((SECONDS - start)) "$*" >> "$summary"
    return $rc
}
# quote PATTERN LOG: the log's lines matching PATTERN, into the summary.
quote() {
    { echo '```'; grep -E "$1" "$out/$2.log" | tail -n 20; echo '```'; } >> "$summary"
}

# 1. Operations and network against the CPU reference.
step check-device 90 "$gnmt" --device "$device" check-device --failures-only
quote '.' check-device
# The same with the fused kernels: gnmt-cuda-kernels' LSTM cell and loss, composites elsewhere.
step check-device-fused 90 "$gnmt" --device "$device" --kernels fused check-device --failures-only
quote '.' check-device-fused
step check-device-bf16 90 "$gnmt" --device "$device" --kernels fused --matmul bf16 check-device --failures-only
quote '.' check-device-bf16
# TF32 is a GPU's format: the CPU (a dry run) refuses it.
gpu_only() {
    if [ "$device" = cpu ]; then
        printf '\n## %s: skipped (TF32 products need a GPU)\n' "$1" >> "$summary"
        return 1
    fi
}
if gpu_only check-device-tf32; then
    step check-device-tf32 90 "$gnmt" --device "$device" --kernels fused --matmul tf32 \
        check-device --failures-only
    quote '.' check-device-tf32
fi

# 2. Training: the same seeded run on the device and (first steps) on the CPU.
train=(train --train "$data/train.en" "$data/train.de" --valid "$data/val.en" "$data/val.de"
    --preset "$preset" --tokenizer models/multi30k-en-de/tokenizer.json --seed 1 -q
    --valid-every 100000 --save-every 100000)
step train-device $((train_secs + 60)) "$gnmt" --device "$device" "${train[@]}" \
    -o "$work/run-device" --max-steps "$train_steps" --max-time "${train_secs}s" \
    --log-every "$compare_steps"
cp "$work/run-device/metrics.jsonl" "$out/train-device.metrics.jsonl" 2>/dev/null
step train-cpu 120 "$gnmt" --device cpu "${train[@]}" -o "$work/run-cpu" \
    --max-steps "$compare_steps" --log-every "$compare_steps"
cp "$work/run-cpu/metrics.jsonl" "$out/train-cpu.metrics.jsonl" 2>/dev/null
step train-compare 10 python3 - "$out/train-device.metrics.jsonl" "$out/train-cpu.metrics.jsonl" <<'EOF'
# The first logged loss (the mean over the same first updates, same data and dropout) on the
# device against the CPU's, and the device's loss at the end against its start.
import json, sys
def losses(path):
    rows = [json.loads(l) for l in open(path)]
    return [(r["step"], r["loss"], r.get("tokens_per_s")) for r in rows if "loss" in r and "step" in r]
device, cpu = losses(sys.argv[1]), losses(sys.argv[2])
(s0, d0, _), (c_step, c0, _) = device[0], cpu[0]
rel = abs(d0 - c0) / abs(c0)
print(f"first logged loss (steps 1-{s0}): device {d0:.5f}, cpu {c0:.5f}, relative difference {rel:.2e}")
last_step, last, rate = device[-1]
print(f"device loss at step {last_step}: {last:.4f} (from {d0:.4f}); last logged {rate} target tokens/s")
ok = s0 == c_step and rel < 1e-3 and last < 0.9 * d0
print("train-compare:", "ok" if ok else "FAILED (need the same first loss within 1e-3 and a fall by 10%)")
sys.exit(0 if ok else 1)
EOF
quote '.' train-compare

# 3. Training speed against PyTorch on the same device.
step bench-train 240 "$gnmt" --device "$device" bench train --preset "$preset" \
    --batch "$bench_batch" --threads-list "$threads" --steps 10 --torch --torch-amp none,bf16
quote 'tokens/s|vs PyTorch|torch' bench-train
step bench-train-fused 90 "$gnmt" --device "$device" --kernels fused bench train \
    --preset "$preset" --batch "$bench_batch" --threads-list "$threads" --steps 10
quote 'tokens/s' bench-train-fused
step bench-train-bf16 90 "$gnmt" --device "$device" --kernels fused --matmul bf16 bench train \
    --preset "$preset" --batch "$bench_batch" --threads-list "$threads" --steps 10
quote 'tokens/s' bench-train-bf16
if gpu_only bench-train-tf32; then
    step bench-train-tf32 120 "$gnmt" --device "$device" --kernels fused --matmul tf32 bench train \
        --preset "$preset" --batch "$bench_batch" --threads-list "$threads" --steps 10 --torch
    quote 'tokens/s|vs PyTorch|torch' bench-train-tf32
fi

# 4. Decoding: quality, speed against the CPU at 2 threads, and batch independence.
head -n "$lines" "$data/test_2016_flickr.en" > "$work/test.en"
head -n "$lines" "$data/test_2016_flickr.de" > "$work/test.de"
model=models/multi30k-en-de
step eval-beam5 120 "$gnmt" --device "$device" eval -m $model --src "$work/test.en" \
    --ref "$work/test.de" --beam-size 5 -o "$work/beam5.de"
quote 'BLEU|chrF|sentences' eval-beam5
step bench-translate 180 "$gnmt" --device "$device" bench translate -m $model \
    --src "$work/test.en" --beams 1,5 --threads-list "$threads"
quote 'sentences/s|tokens/s' bench-translate
step bench-translate-cpu 180 "$gnmt" --device cpu bench translate -m $model \
    --src "$work/test.en" --beams 1,5 --threads-list 2
quote 'sentences/s|tokens/s' bench-translate-cpu
head -n 200 "$work/test.en" > "$work/test200.en"
# batch_independence NAME [OPTIONS...]: the first 200 lines translated with OPTIONS in batches
# of 1 and of 64, and the lines that differ counted.
batch_independence() {
    local name=$1
    shift
    step "$name" 120 bash -c "
        '$bin/translate' --device $device $* -q -m $model --batch-size 1 < '$work/test200.en' > '$work/$name-1.de' &&
        '$bin/translate' --device $device $* -q -m $model --batch-size 64 < '$work/test200.en' > '$work/$name-64.de' &&
        diff '$work/$name-1.de' '$work/$name-64.de' > '$work/$name.diff'; rc=\$?;
        echo \"lines differing between batch sizes 1 and 64: \$(grep -c '^<' '$work/$name.diff')\"; exit \$rc"
    quote 'differing' "$name"
}
batch_independence batch-independence
# The same with the fused kernels (ours where a decoding step has one: the cell, the attention
# step and the top tokens, each row reduced alone; cuBLAS's products otherwise).
step eval-beam5-fused 120 "$gnmt" --device "$device" --kernels fused eval -m $model \
    --src "$work/test.en" --ref "$work/test.de" --beam-size 5 -o "$work/beam5-fused.de"
quote 'BLEU|chrF|sentences' eval-beam5-fused
step bench-translate-fused 180 "$gnmt" --device "$device" --kernels fused bench translate \
    -m $model --src "$work/test.en" --beams 1,5 --threads-list "$threads"
quote 'sentences/s|tokens/s' bench-translate-fused
batch_independence batch-independence-fused --kernels fused

printf '\n%s step(s) failed\n' "$failures" >> "$summary"
cat "$summary"
[ "$failures" -eq 0 ]
