#!/usr/bin/env bash
# The accelerator benchmark matrix in one go, for a lent GPU (or any GPU machine):
#   OUT=bench-gpu bash scripts/bench_gpu.sh
# Writes the device and versions, the attention paths checked against fp32 and timed
# (scripts/bench_attention.py), then scripts/bench_train.py over the presets in both
# dtypes, one JSON line each, into $OUT; the most telling runs go first so that a
# short lease still brings them back. The compiled HLO of the BERT-base seq-512 bf16
# step is kept for reading which kernels XLA chose. BERT-base's initializer did not
# compile within 150 s on an H200 with JAX's default unrolled threefry lowering, so the
# first BERT-base run asks for the kernel lowering (same random bits), the second not.
set -u
out=${OUT:-bench-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nodrop=(--set model.dropout_rate=0 --set model.attention_dropout_rate=0)

bench() {
    if ! timeout "${BENCH_TIMEOUT:-300}" python3 scripts/bench_train.py "$@" \
        >>"$out/train.jsonl" 2>>"$out/errors.log"; then
        echo "FAILED: $*" | tee -a "$out/errors.log"
    fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv >"$out/device.txt" 2>&1
python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__,
'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$out/device.txt"

bench --config configs/tiny.yaml
timeout 120 python3 scripts/bench_attention.py --batch 32 --seq 512 \
    | tee -a "$out/attention.jsonl"

base512=(--config configs/bert-base.yaml --set data.seq_len=512 --set train.global_batch_size=128
    "${nodrop[@]}")
export JAX_THREEFRY_GPU_KERNEL_LOWERING=true
bench "${base512[@]}" --hlo-out "$out/bert-base-512-bf16.hlo"
unset JAX_THREEFRY_GPU_KERNEL_LOWERING
bench "${base512[@]}"
export JAX_THREEFRY_GPU_KERNEL_LOWERING=${THREEFRY_KERNEL:-true}
bench "${base512[@]}" --set model.attention_kernel=explicit
bench "${base512[@]}" --set model.dtype=float32
bench --config configs/bert-base.yaml
bench --config configs/bert-base.yaml --set model.dtype=float32
bench --config configs/bert-large.yaml --set mesh.fsdp=1
bench --config configs/bert-large.yaml --set mesh.fsdp=1 --set model.dtype=float32
bench --config configs/modern-base.yaml --set train.global_batch_size=32
bench --config configs/modern-base.yaml --set train.global_batch_size=32 --set model.dtype=float32
bench --config configs/tiny.yaml --set model.dtype=float32
gzip -f "$out/bert-base-512-bf16.hlo" 2>/dev/null

python3 - "$out/train.jsonl" <<'PY'
import json, sys
print(f"{'config':28} {'dtype':9} {'attn':8} {'batch':>5} {'seq':>5} {'tok/s':>10} {'TFLOP/s':>8} {'peak':>7} {'MFU':>6}  products")
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = r["config"].split("/")[-1] + "".join(" " + o.split("=")[-1] for o in r["overrides"] if "kernel" in o)
    print(f"{name:28} {r['dtype']:9} {r['attention']:8} {r['global_batch_size']:5} {r['seq_len']:5} "
          f"{r['tokens_per_s']:10.0f} {r['model_tflops_per_s']:8.1f} {r['peak_tflops_per_s']:7.1f} "
          f"{r['mfu']:6.1%}  {r['products']}")
PY
