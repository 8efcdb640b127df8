#!/usr/bin/env bash
# The GPU acceptance run (issue 7 item 6): one command, on a lent H100 or H200, within 20 minutes.
#
#   bash bench/gpu_acceptance.sh [--out DIR] [--only STEP,STEP] [--tar FILE] [--results]
#   bash bench/gpu_acceptance.sh --dry-run --out DIR          # the same steps on the CPU, tiny shapes
#
# Steps (each logged to DIR/STEP.log, its exit status and seconds to DIR/steps.jsonl; a failing step is
# recorded and the next one still runs):
#   env       device, driver and package versions                          -> env.json, nvidia-smi.txt
#   tests     the CUDA test subset: tests/test_cuda.py (both kernels vs float64 in bf16/fp16 at Llama-3.2-1B and
#             8B head shapes; the fast path vs the reference over 20 steps in fp32 and bf16) and the kernel,
#             pair-loss and attention-adapter tests on the GPU                          -> tests.xml
#   attention bench_attention.py: Triton kernel, FlexAttention, SDPA flash on view 1, dense-mask SDPA, the PyTorch
#             form, flash-attn-4 where installed; fwd+bwd time and peak memory, 1B heads  -> attention.{json,md}
#   step      bench_step.py --config llama-1b: (a)-(e) and the backend/LM-head variants, gsm8k, N=2, K=1, batch 4,
#             bf16, checkpointing as training, every shape warmed, packing in the collator -> step.{json,md}
#   tiles     candidate_configs() timed per head_dim (64, 128), the chosen table          -> tiles_d64.*, tiles_d128.*
#   aot       bench/aot_compile.py --arch 90, where present                              -> aot_sm90.{json,md}
#   report    bench/acceptance_report.py: summary.{json,md} with the goals, and RESULTS.md rewritten
#             (--results: bench/RESULTS.md itself; otherwise DIR/RESULTS.md)
#
# The device tool runs at most 10 minutes per command and returns at most 8 files: run it in two calls, each
# packing its folder (--tar), then report here from both folders:
#   run: bash bench/gpu_acceptance.sh --only env,tests,attention --out /tmp/a --tar $OUT/a.tgz
#   run: bash bench/gpu_acceptance.sh --only env,step,tiles,aot --out /tmp/b --tar $OUT/b.tgz
#   here: tar -xzf a.tgz -C /tmp/a; tar -xzf b.tgz -C /tmp/b
#         python bench/acceptance_report.py --in /tmp/a /tmp/b --out bench/results/gpu --results bench/RESULTS.md
# gsm8k must travel with the tree: mkdir -p shared/datasets && cp ../shared/datasets/gsm8k_test.jsonl shared/datasets/
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT_DIR=""
ONLY="env,tests,attention,step,tiles,aot,report"
TAR=""
RESULTS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --tar) TAR="$2"; shift ;;
    --results) RESULTS=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_acceptance.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$OUT_DIR" ]; then
  if [ "$DRY" = 1 ]; then OUT_DIR="$(mktemp -d)"; else OUT_DIR="$ROOT/bench/results/gpu"; fi
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
# llmjepa and llmjepa_kernels importable without installing (a device machine starts bare)
if ! "$PY" -c "import llmjepa, llmjepa_kernels" >/dev/null 2>&1; then
  SHIM="$(mktemp -d)"
  ln -s "$ROOT/kernels" "$SHIM/llmjepa_kernels"
  export PYTHONPATH="$ROOT:$SHIM:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1

wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# step NAME SECONDS COMMAND...: run with a time limit, log, record status; never stop the script
step() {
  local name="$1" limit="$2"; shift 2
  wants "$name" || return 0
  echo "== $name (limit ${limit}s): $*"
  local start end rc
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  tail -n 5 "$OUT_DIR/$name.log"
  printf '{"step": "%s", "rc": %d, "seconds": %d, "timed_out": %s, "dry_run": %s}\n' \
    "$name" "$rc" "$((end - start))" "$([ $rc = 124 ] && echo true || echo false)" \
    "$([ $DRY = 1 ] && echo true || echo false)" >>"$OUT_DIR/steps.jsonl"
  echo "== $name: exit $rc in $((end - start)) s"
}

skip() {
  wants "$1" || return 0
  printf '{"step": "%s", "rc": null, "skipped": "%s", "dry_run": %s}\n' "$1" "$2" \
    "$([ $DRY = 1 ] && echo true || echo false)" >>"$OUT_DIR/steps.jsonl"
  echo "== $1: skipped: $2"
}

if wants env; then
  (nvidia-smi || echo "nvidia-smi: not available") >"$OUT_DIR/nvidia-smi.txt" 2>&1
  step env 120 "$PY" bench/acceptance_report.py --env "$OUT_DIR/env.json"
fi

if [ "$DRY" = 1 ]; then
  # Tiny shapes on the CPU: the Triton methods run in its interpreter (fp32), timings mean nothing.
  step tests 300 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py --junitxml "$OUT_DIR/tests.xml"
  step attention 300 env TRITON_INTERPRET=1 "$PY" bench/bench_attention.py --dry-run --tokens 64 \
    --check-tokens 32 --q-heads 2 --kv-heads 1 --head-dim 16 --dtype fp32 --cpu-reps 1 \
    --methods sdpa_dense flex sdpa_view1 fa4_view1 triton torch_form --output "$OUT_DIR/attention.md"
  step step 300 "$PY" bench/bench_step.py --config tiny --rounds 1 --microbatches 1 --warmup 1 \
    --methods upstream_regular packed_regular upstream_jepa fast_jepa fast_isolated \
    --no_memory --out_dir "$OUT_DIR" --name step
  step tiles 300 env TRITON_INTERPRET=1 "$PY" bench/bench_attention.py --dry-run --tokens 32 --check-tokens 0 \
    --q-heads 2 --kv-heads 1 --head-dim 16 --dtype fp32 --cpu-reps 1 --methods triton --candidates \
    --output "$OUT_DIR/tiles_d16.md"
  skip aot "dry run: compiling every kernel with ptxas takes minutes on this CPU; CI runs aot_compile.py itself"
else
  # every test that skips without CUDA: kernels, fast path, no-sync checks, flex, FSDP vs DDP
  step tests 480 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_block_causal_attention.py \
    tests/test_cosine_loss.py tests/test_hf_attention.py tests/test_flex_attention.py \
    tests/test_sync_free.py::test_no_sync_in_a_cuda_microbatch \
    tests/test_kernel_compile.py::test_no_cuda_sync_in_kernel_wrappers \
    tests/test_training_arguments.py::test_fsdp_trains_as_ddp_does --junitxml "$OUT_DIR/tests.xml"
  step attention 360 "$PY" bench/bench_attention.py --tokens 4096 8192 16384 32768 --output "$OUT_DIR/attention.md"
  step step 360 "$PY" bench/bench_step.py --config llama-1b --rounds 5 --microbatches 4 --out_dir "$OUT_DIR" \
    --name step
  step tiles 240 bash -c "\"$PY\" bench/bench_attention.py --methods triton --tokens 16384 --check-tokens 2048 \
    --candidates --output \"$OUT_DIR/tiles_d64.md\"; \"$PY\" bench/bench_attention.py --methods triton \
    --tokens 16384 --check-tokens 2048 --head-dim 128 --candidates --output \"$OUT_DIR/tiles_d128.md\""
  if [ -f bench/aot_compile.py ]; then
    step aot 300 "$PY" bench/aot_compile.py --arch 90 --json "$OUT_DIR/aot_sm90.json" --md "$OUT_DIR/aot_sm90.md"
  else
    skip aot "bench/aot_compile.py is not in this checkout"
  fi
fi

if wants report; then
  if [ "$RESULTS" = 1 ]; then target="$ROOT/bench/RESULTS.md"; else target="$OUT_DIR/RESULTS.md"; fi
  step report 120 "$PY" bench/acceptance_report.py --in "$OUT_DIR" --out "$OUT_DIR" --results "$target" \
    --template "$ROOT/bench/RESULTS.md"
  cat "$OUT_DIR/summary.md" 2>/dev/null
fi

if [ -n "$TAR" ]; then
  tar -czf "$TAR" -C "$OUT_DIR" . && echo "packed $OUT_DIR into $TAR"
fi
echo "gpu_acceptance.sh: results in $OUT_DIR"
