#!/usr/bin/env bash
# The GPU acceptance run (issue 15): ONE command on a lent H100/H200, at most 8 minutes wall clock with every
# Triton compile, writing two files to --out: acceptance.tgz (rewritten atomically after every step, so a command
# stopped at any point returns every finished step) and acceptance.log (the console).
#
#   bash bench/gpu_acceptance.sh --out DIR [--deadline SECONDS] [--only STEP,STEP]
#   bash bench/gpu_acceptance.sh --dry-run --out DIR            # the same steps on the CPU at tiny shapes (CI)
#
# On a lent machine (the device tool; the tree travels, gsm8k with it in the ignored shared/ folder):
#   here:   mkdir -p shared/datasets && cp ../shared/datasets/gsm8k_test.jsonl shared/datasets/
#   run:    bash bench/gpu_acceptance.sh --out $OUT          (timeout_s 540; carry ["shared"])
#   here:   mkdir -p bench/results/gpu && tar -xzf <files_at>/acceptance.tgz -C bench/results/gpu
#           cp <files_at>/acceptance.log bench/results/gpu/
#           python bench/acceptance_report.py --in bench/results/gpu --out bench/results/gpu --results bench/RESULTS.md
#           git add bench/results/gpu bench/RESULTS.md && git commit
# docs/gpu.md says the same at length.
#
# Steps, in order of decision value; the deadline (default 450 s) gives each min(budget, time left) and skips,
# with the reason, a step that has less left than its minimum (bench/acceptance.py):
#   env             versions, device, import check of llmjepa, llmjepa_kernels, triton        30 s (min 3)
#   tests_kernels   pytest -m gpu, not the parity and FSDP tests: both kernels vs float64 in bf16/fp16 at the
#                   Llama-3.2-1B and 8B head shapes, the pair loss, no host sync              150 s (min 30)
#   tiles_d{64,128}_{bf16,fp16}  every candidate_configs() tile config vs float64 (fwd+bwd), then timed; a
#                   candidate that disagrees is never chosen                                   60 s each (min 15)
#   step            bench_step.py --config llama-1b: packed_regular, fast_jepa, upstream_jepa; bf16, gradient
#                   checkpointing, memory in total and above model+grads+AdamW              170 s (min 60)
#   tests_parity    pytest -m gpu -k fast_path_equals_reference: fast vs reference, 20 steps  90 s (min 30)
#   attention       bench_attention.py: Triton, FlexAttention, SDPA flash on view 1, flash-attn-4 75 s (min 20)
#   step_more       bench_step.py: upstream_regular, fast_isolated and the variants          120 s (min 45)
#   tests_fsdp      pytest -m gpu -k fsdp                                                      60 s (min 20)
#   tests_liger     pytest -m gpu -k liger: every Liger-Kernel patch with both executors        60 s (min 20)
# pytest's exit 5 (no test carries the gpu marker) is recorded as "none selected", not as a failure.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case " $* " in *" -h "*|*" --help "*) sed -n '2,36p' "$0"; exit 0 ;; esac
PY="${PYTHON:-python3}"
export PYTHON="$PY" PYTHONUNBUFFERED=1
# llmjepa and llmjepa_kernels import from the repository root without installing (a device machine starts bare);
# the bench scripts run from bench/, so the root goes on PYTHONPATH
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$ROOT/bench/acceptance.py" "$@"
