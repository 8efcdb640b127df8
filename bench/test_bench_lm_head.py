"""pytest-benchmark: the LM-head loss forward + backward, the three ways of llmjepa/execution/lm_head.py
(bench_lm_head.py's WAYS): logits (the whole tokens x vocab tensor), chunks (checkpointed chunks of rows),
linear_ce (torch's F.linear_cross_entropy, where torch has it). Each way's loss and gradients are checked
against the logits way before it is timed.

    pytest bench/test_bench_lm_head.py --benchmark-only
    pytest bench/test_bench_lm_head.py --benchmark-disable                 # smoke: each once, no timing

CUDA: 8192 tokens, hidden 2048, vocab 128256 (Llama-3.2-1B's head), bf16; CPU: 256 x 64, vocab 2000,
float32. bench_lm_head.py is the script form, with peak memory per way in a fresh process.
"""

import pytest
import torch
from bench_lm_head import WAYS, Shape, available, make_inputs
from benchlib import CUDA, DEVICE, assert_close, record, synchronize

from llmjepa.execution.lm_head import LogitTransform, lm_head_cross_entropy_sum

SHAPE = Shape(8192, 2048, 128256, "bfloat16") if CUDA else Shape(256, 64, 2000, "float32")


def loss_and_grads(way: str, hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Linear) -> list:
    loss = lm_head_cross_entropy_sum(hidden, targets, head, LogitTransform(), way)
    return [loss.detach(), *torch.autograd.grad(loss, [hidden, head.weight])]


@pytest.mark.parametrize("way", WAYS)
def test_lm_head(benchmark, way: str) -> None:
    if (reason := available(way, DEVICE)) is not None:
        pytest.skip(f"{way}: {reason}")
    hidden, targets, head = make_inputs(SHAPE, DEVICE)
    reference = loss_and_grads("logits", hidden, targets, head)
    got = loss_and_grads(way, hidden, targets, head)
    assert_close(got, reference, ("loss", "d hidden", "d weight"), 2e-2 if CUDA else 1e-5, f"LM head, {way}")
    record(benchmark, f"LM head loss fwd+bwd, {SHAPE.tokens} x {SHAPE.vocab}", way=way, shape=SHAPE)

    def run() -> None:
        loss_and_grads(way, hidden, targets, head)
        synchronize()

    benchmark(run)
