"""JepaTrainer: a transformers.Trainer whose loss is gamma * LM + lbd * JEPA over view plans.

Normalization (the reason --lbd 0 equals --regular here): the LM loss of an optimizer step is
the sum of token losses over every microbatch and rank divided by the number of predicted
tokens in that step; the JEPA loss is the mean over every pair in that step. Both totals are
counted before the step's first forward (`get_batch_samples`), so each microbatch's loss is
already its share of the step's loss: the Trainer must not divide by grad_accum again
(`loss_is_scaled_for_ga = True`), and under DDP, which averages gradients over ranks, each
rank's share is multiplied by the world size.
"""

import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer

from ..distributed import all_reduce_sums, world_size
from ..errors import NonFiniteLoss
from ..execution.losses import jepa_pair_losses
from ..execution.protocol import Executed, Executor
from ..views.plan import ViewPlan
from .callbacks import StepRecorder, StopOnSignal
from .checkpoints import save_atomically
from .health import KEYS as HEALTH_KEYS
from .health import EmbeddingHealth, collapse_warning

logger = logging.getLogger("llmjepa")

FUSED_KINDS = ("cosine", "l2", "mse")  # infonce compares every pair with every other: PyTorch


@dataclass
class LossConfig:
    regular: bool = False  # LM loss only, no views built
    lbd: float = 0.1
    gamma: float = 1.0
    jepa_kind: str = "cosine"  # cosine | l2 | mse | infonce
    jepa_ratio: float = -1.0  # > 0: each microbatch runs its views with this probability
    seed: int = 42
    debug: int = 0  # print every microbatch of the first `debug` optimizer steps
    # cosine/l2/mse through llmjepa_kernels' fused kernel (needs Triton); None: the factory decides (the fast
    # path where Triton runs: training/factory.py)
    fused_pair_loss: bool | None = None


@dataclass
class StepStats:
    """Sums over the microbatches of one optimizer step (this rank).

    The loss sums stay on the device (`device_sums`: ce, jepa, cos), added to without reading them, so a
    microbatch costs no host-device sync; finish_step reads them once per optimizer step. The counts
    come from the plans and are host ints."""

    device_sums: torch.Tensor | None = None  # (3,): ce_sum, jepa_sum, cos_sum
    label_tokens: int = 0
    pairs: int = 0
    tokens: int = 0
    tokens_run: int = 0  # positions the executor ran: padded rows (reference) or the packed stream (fast)
    rows: int = 0
    microbatches: int = 0
    lbd: float | None = None  # the JEPA weight the step's plans returned (STP's --lbd_warmup); None: LossConfig's
    started: float = field(default_factory=time.perf_counter)

    def add(
        self,
        plan: ViewPlan,
        ce_sum: torch.Tensor,
        jepa_sum: torch.Tensor,
        cos_sum: torch.Tensor,
        tokens_run: int,
        lbd: float | None = None,
    ) -> None:
        self.lbd = lbd
        sums = torch.stack([x.detach().reshape(()) for x in (ce_sum, jepa_sum, cos_sum)])
        sums = sums.to(sum_dtype(sums.device))
        self.device_sums = sums if self.device_sums is None else self.device_sums + sums
        self.label_tokens += plan.label_tokens
        self.pairs += plan.n_pairs
        self.tokens += plan.n_tokens
        self.tokens_run += tokens_run
        self.rows += plan.n_rows
        self.microbatches += 1


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for the step's loss sums, as the Python floats they replace; float32 where a device has
    no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def peak_memory_mib() -> float:
    """CUDA max allocated where CUDA runs, else the process's max resident set size (RSS); both since the
    previous training log (reset_peak_memory), the RSS since the process started where Linux's
    /proc/self/clear_refs cannot reset it."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def reset_peak_memory() -> None:
    """After each training log, so that peak_memory_mib is the largest of the next log window: CUDA's peak
    statistics; on the CPU the process's RSS high-water mark (Linux >= 4.0: '5' into /proc/self/clear_refs)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the RSS peak stays the process's
        pass


WINDOW_MEANS = ("lm_loss", "jepa_loss", "mean_cos", "label_tokens", "pairs", "tokens_run")


def window_metrics(records: list[dict]) -> dict[str, float]:
    """What a training log adds: per-step means over the records since the previous log, the largest peak
    memory. Values that are None (non-finite, or mean_cos without pairs) are left out."""
    merged: dict[str, float] = {}
    for key in WINDOW_MEANS:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            merged[key] = sum(values) / len(values)
    peaks = [r["peak_memory_mib"] for r in records if r.get("peak_memory_mib") is not None]
    if peaks:
        merged["peak_memory_mib"] = max(peaks)
    return merged


@dataclass
class EvalSums:
    """Sums over an evaluation's microbatches (this rank): ce, jepa and cos on the device, counts on the host."""

    device_sums: torch.Tensor | None = None  # (3,): ce_sum, jepa_sum, cos_sum
    label_tokens: int = 0
    pairs: int = 0
    lbd: float | None = None  # the JEPA weight the plans returned (STP's --lbd_warmup); None: LossConfig's

    def add(
        self, plan: ViewPlan, ce_sum: torch.Tensor, jepa_sum: torch.Tensor, cos: torch.Tensor | None, lbd: float
    ) -> None:
        self.lbd = lbd
        cos_sum = cos.sum() if cos is not None else ce_sum.new_zeros(())
        sums = torch.stack([x.detach().reshape(()) for x in (ce_sum, jepa_sum, cos_sum)])
        sums = sums.to(sum_dtype(sums.device))
        self.device_sums = sums if self.device_sums is None else self.device_sums + sums
        self.label_tokens += plan.label_tokens
        self.pairs += plan.n_pairs

    def metrics(self, cfg: LossConfig, device: torch.device) -> dict[str, float]:
        """lm_loss, perplexity, loss and (with pairs) jepa_loss and mean_cos over the whole set, all ranks."""
        if self.device_sums is None and world_size() == 1:
            return {}
        sums = self.device_sums if self.device_sums is not None else torch.zeros(3, dtype=sum_dtype(device))
        values = sums.tolist() + [float(self.label_tokens), float(self.pairs)]
        ce, jepa, cos, tokens, pairs = all_reduce_sums(values, device)
        lm_loss = ce / max(tokens, 1)
        out = {"lm_loss": lm_loss, "perplexity": math.exp(min(lm_loss, 700.0))}
        if pairs:
            out.update(jepa_loss=jepa / pairs, mean_cos=cos / pairs)
        jepa_loss = out.get("jepa_loss", 0.0)
        lbd = cfg.lbd if self.lbd is None else self.lbd
        out["loss"] = lm_loss if cfg.regular else cfg.gamma * lm_loss + lbd * jepa_loss
        return out


class JepaTrainer(Trainer):
    """Trainer over `{"plan": ViewPlan}` batches (see collate.ViewCollator).

    `executor(model, plan)` runs the plan: `execute.run_reference` (dense masks, upstream
    semantics) or the packed fast path; both return `Executed`.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        executor: Executor | None = None,
        loss_config: LossConfig | None = None,
        view_config: Any = None,
        peft_config: Any = None,
        run_options: Any = None,
        metrics_path: Path | None = None,
        track_flops: bool = False,
        **kwargs: Any,
    ) -> None:
        """Trainer's arguments, and: executor, loss_config, view_config (views.ViewConfig), peft_config,
        run_options (factory.RunOptions: llmjepa-train's --impl, --attention_backend, ...); what is not given is
        decided in factory.decide, for the library and the CLI alike, and datasets of {"messages": [...]} rows
        are tokenized there."""
        from .factory import decide, trainer_keywords

        loss_config = LossConfig() if loss_config is None else loss_config
        decided = decide(trainer_keywords(args, kwargs), loss_config, view_config, peft_config, executor, run_options)
        kwargs, loss_config, executor = decided.kwargs, decided.loss_config, decided.executor
        super().__init__(**kwargs)
        # transformers 5.17 and 5.18 have no loss_is_scaled_for_ga: their training_step divides the loss (and so
        # the gradient) by gradient accumulation unless model_accepts_loss_kwargs, as get_batch_samples always
        # returns the step's count. compute_loss here hands the model no loss kwargs, so the flag decides only
        # that division (tests/test_trainer_logging.py; .ci/floor_smoke.py on the oldest transformers).
        self.model_accepts_loss_kwargs = True
        self.track_flops = track_flops
        self.executor = executor
        self.loss_config = loss_config
        self.step_totals = (1, 1)  # (label tokens, pairs) of the optimizer step in progress, all ranks
        self.stats = StepStats()
        self.history: list[dict] = []
        self.logged_records = 0  # history records already merged into a Trainer log (see log())
        self.eval_sums = EvalSums()
        self.microbatches_seen = 0
        self.health = EmbeddingHealth()  # the log window's JEPA embeddings (training/health.py)
        self.window_health: dict[str, float] = {}  # their numbers, computed at the logging step's end
        self.health_warned = False
        if not loss_config.regular and loss_config.gamma == 0 and loss_config.lbd != 0 and self.is_world_process_zero():
            logger.warning(
                "llmjepa: warning: --gamma 0: no LM term, and nothing else keeps the JEPA embeddings "
                "from collapsing to one vector (watch jepa_pred_std and jepa_pred_rank)"
            )
        self.add_callback(StepRecorder(self, metrics_path))
        self.run_identity: dict | None = None  # written into every checkpoint (llmjepa-train sets it)
        self._staging_dir: str | None = None

    # ---- checkpoints: written into a staging folder, published by one rename (checkpoints.py) ----------
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = super()._get_output_dir(trial=trial)

        def save(staging: str) -> None:
            self._staging_dir = staging
            try:
                super(JepaTrainer, self)._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None

        save_atomically(self, run_dir, self.state.global_step, save, self.run_identity)
        if self.args.should_save:
            rotate_published(self, run_dir)

    def _get_output_dir(self, trial: Any) -> str:
        """While a checkpoint is written: the staging folder, so that the Trainer writes there."""
        return self._staging_dir or super()._get_output_dir(trial=trial)

    # ---- normalization -------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        tokens = sum(b["plan"].label_tokens for b in batches)
        pairs = sum(b["plan"].n_pairs for b in batches)
        tokens, pairs = all_reduce_sums([float(tokens), float(pairs)], device)
        self.step_totals = (int(tokens), int(pairs))
        self.stats = StepStats()  # the step's clock starts before its data is collated
        return batches, int(tokens)  # a host int: a tensor made on the device here would be a blocking upload

    def plan_losses(self, model: torch.nn.Module, plan: ViewPlan, label_tokens: int, pairs: int) -> tuple:
        """(loss, ce_sum, jepa_sum, per-pair cosines or None, tokens run, lbd) of one plan, normalized by the
        step totals; lbd: the JEPA weight used (LossConfig's, or STP's warm-up value at this step)."""
        cfg = self.loss_config
        if plan.stp is not None:  # --linear (STP): the JEPA term reads view 1's hidden rows (execution/stp.py)
            from ..execution.stp import stp_plan_losses

            step, max_steps = self.state.global_step, self.state.max_steps
            return stp_plan_losses(self.executor, model, plan, label_tokens, pairs, cfg.gamma, step, max_steps)
        out: Executed = self.executor(model, plan)
        lm = out.ce_sum / max(label_tokens, 1)
        tokens_run = out.hidden.shape[0]
        if plan.n_pairs == 0:
            lm_only = lm if cfg.regular else cfg.gamma * lm
            return lm_only, out.ce_sum, out.ce_sum.new_zeros(()), None, tokens_run, cfg.lbd
        jepa_sum, cos = self.pair_loss_sum(out)
        if model.training:  # the window's embeddings, kept on the device (training/health.py)
            self.health.add(out.hidden, out.pred_index, out.target_index)
        loss = cfg.gamma * lm + cfg.lbd * jepa_sum / max(pairs, 1)
        return loss, out.ce_sum, jepa_sum, cos, tokens_run, cfg.lbd

    def pair_loss_sum(self, out: Executed) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the JEPA terms over the plan's pairs, per-pair cosines): fused kernel or PyTorch."""
        kind = self.loss_config.jepa_kind
        if self.loss_config.fused_pair_loss and kind in FUSED_KINDS:
            from llmjepa_kernels import cosine_jepa_loss

            # The plan's pair indices are in range by construction: skip the kernel's check (a host sync).
            return cosine_jepa_loss(
                out.hidden, out.pred_index, out.target_index, reduction="sum", kind=kind, check_indices=False
            )
        terms, cos = jepa_pair_losses(out.hidden[out.pred_index], out.hidden[out.target_index], kind)
        return terms.sum(), cos

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        plan: ViewPlan = inputs["plan"]
        if not model.training:  # evaluation: this microbatch alone; the set's sums for evaluation_loop's metrics
            loss, ce_sum, jepa_sum, cos, _, lbd = self.plan_losses(model, plan, plan.label_tokens, plan.n_pairs)
            self.eval_sums.add(plan, ce_sum, jepa_sum, cos, lbd)
            return (loss, None) if return_outputs else loss
        label_tokens, pairs = self.step_totals
        loss, ce_sum, jepa_sum, cos, tokens_run, lbd = self.plan_losses(model, plan, label_tokens, pairs)
        cos_sum = cos.sum() if cos is not None else ce_sum.new_zeros(())
        self.stats.add(plan, ce_sum, jepa_sum, cos_sum, tokens_run, lbd)  # on the device: no sync here
        self.maybe_print_debug(plan, ce_sum, loss, cos)
        # DDP averages gradients over ranks; our loss is this rank's share of the global sum.
        loss = loss * world_size()
        return (loss, None) if return_outputs else loss

    def prediction_step(
        self, model: torch.nn.Module, inputs: dict, prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple:
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def floating_point_ops(self, inputs: dict) -> int:
        """6 * parameters * tokens run, the usual estimate for forward + backward (--track_flop)."""
        return 6 * self.model.num_parameters() * inputs["plan"].n_tokens

    # ---- metrics in every report_to backend -----------------------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """A training log (it has "loss") gets the JEPA numbers of the steps since the previous one (as TRL's
        trainers merge theirs): means of lm_loss, jepa_loss, mean_cos, label_tokens, pairs, tokens_run per step,
        and the largest peak_memory_mib. Every report_to backend, and state.log_history, then has them."""
        records = self.history[self.logged_records :]
        if "loss" in logs and records:
            self.logged_records = len(self.history)
            logs.update(window_metrics(records))
            logs.update(self.window_health or self.summarize_health())
            self.window_health = {}
            reset_peak_memory()
        super().log(logs, *args, **kwargs)

    def summarize_health(self) -> dict[str, float]:
        """The log window's embedding health (training/health.py): read at the log, one copy; the collapse
        warning once per run (rank 0)."""
        summary, rows = self.health.summary()
        if summary is None:
            return {}
        values = dict(zip(HEALTH_KEYS, summary.tolist()))
        line = collapse_warning(values, rows, self.health.dim, self.state.global_step)
        if line and not self.health_warned and self.is_world_process_zero():
            self.health_warned = True
            logger.warning(line)
        return values

    def record_health(self) -> None:
        """At a step's end that the Trainer will log (StepRecorder sees control.should_log): the window's health
        into the step's record, so that metrics.jsonl has it too, and kept for log()."""
        self.window_health = self.summarize_health()
        if self.history and self.window_health:
            self.history[-1].update(self.window_health)

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Trainer.push_to_hub's card, on the library's path: llmjepa's (training/model_card.py), with the
        method's settings and the run's last numbers, in place of the Trainer's generic one."""
        if not self.is_world_process_zero():
            return
        from .model_card import record_from_trainer, write_card

        write_card(self.args.output_dir, record_from_trainer(self, model_name, **kwargs))

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """The Trainer's loop, its metrics joined by {prefix}_lm_loss (per label token over the whole set, as an
        SFT eval loss is), {prefix}_jepa_loss (per pair), {prefix}_mean_cos and {prefix}_perplexity; {prefix}_loss
        becomes gamma * lm_loss + lbd * jepa_loss over the whole set (the Trainer's is a mean over microbatches)."""
        self.eval_sums = EvalSums()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        metrics = self.eval_sums.metrics(self.loss_config, self.args.device)
        output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        return output

    # ---- per-step record -----------------------------------------------------------------
    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.finish_step(grad_norm)
        return grad_norm

    def finish_step(self, grad_norm: Any) -> None:
        """Reduce this step's sums over ranks and append its record (called before optimizer.step)."""
        s = self.stats
        ce, jepa, cos, tokens, tokens_run, rows, microbatches, grad_norm = self.read_step_sums(grad_norm)
        label_tokens, pairs = self.step_totals
        cfg = self.loss_config
        lm_loss = ce / max(label_tokens, 1)
        jepa_loss = jepa / pairs if pairs else 0.0
        lbd = cfg.lbd if s.lbd is None else s.lbd  # STP's warm-up: the weight its plans returned this step
        loss = lm_loss if cfg.regular else cfg.gamma * lm_loss + lbd * jepa_loss
        seconds = time.perf_counter() - s.started
        self.history.append(
            {
                "step": self.state.global_step + 1,
                "loss": loss,
                "lm_loss": lm_loss,
                "jepa_loss": jepa_loss,
                "mean_cos": cos / pairs if pairs else None,
                "label_tokens": label_tokens,
                "pairs": pairs,
                "tokens": int(tokens),  # the plan's tokens, every view whole
                "tokens_run": int(tokens_run),  # what the executor ran (padding included, sharing excluded)
                "rows": int(rows),
                "microbatches": int(microbatches),  # over all ranks, as tokens and rows
                "grad_norm": grad_norm,
                "lr": self._get_learning_rate(),
                "step_seconds": seconds,
                "tokens_per_second": tokens / seconds if seconds > 0 else math.inf,
                "peak_memory_mib": peak_memory_mib(),
            }
        )
        if self.track_flops:
            self.history[-1]["flops"] = 6 * self.model.num_parameters() * int(tokens)
        self.stop_if_not_finite(self.history[-1])

    def stop_if_not_finite(self, record: dict) -> None:
        """Stop at a non-finite loss, LM or JEPA term or gradient norm: raised before optimizer.step, so the
        weights stay the previous step's. Every non-finite value in the record becomes None (null in
        metrics.jsonl, which stays strict JSON). Under fp16 mixed precision an inf gradient norm is the
        grad scaler's overflow, whose step it skips: the norm is not checked there."""
        checked = ("loss", "lm_loss", "jepa_loss") + (() if self.args.fp16 else ("grad_norm",))
        bad = {k: record[k] for k in checked if isinstance(record.get(k), float) and not math.isfinite(record[k])}
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = None
        if bad:
            raise NonFiniteLoss(record["step"], bad, record)

    def read_step_sums(self, grad_norm: Any) -> list[float]:
        """ce, jepa, cos, tokens, tokens_run, rows, microbatches (summed over ranks) and grad_norm, the
        device's numbers read in one copy: the step's one host-device sync of ours. Under torchrun the
        ranks' Ctrl-C/SIGTERM flags join the same all-reduce (StopOnSignal.agree): no collective of their own."""
        s = self.stats
        stop = self.signal_callback()
        flags = stop.local_flags() if stop is not None and world_size() > 1 else []
        counts = [s.tokens, s.tokens_run, s.rows, s.microbatches, *flags]
        sums = s.device_sums
        if sums is None:  # no microbatch ran
            sums = torch.zeros(3, dtype=sum_dtype(self.args.device), device=self.args.device)
        if world_size() > 1:  # the counts join the all-reduce: uploaded without blocking (pinned on CUDA)
            host = torch.tensor(counts, dtype=sums.dtype)
            host = host.pin_memory() if sums.device.type == "cuda" else host
            sums = torch.cat([sums, host.to(sums.device, non_blocking=True)])
            dist.all_reduce(sums)
        norm = grad_norm.detach().reshape(1).to(sums) if isinstance(grad_norm, torch.Tensor) else None
        read = (torch.cat([sums, norm]) if norm is not None else sums).tolist()
        if world_size() == 1:
            read[3:3] = counts
        if flags:  # Ctrl-C/SIGTERM agreed over ranks in the same all-reduce (callbacks.StopOnSignal)
            stop.agree(read[7 : 7 + len(flags)])
            del read[7 : 7 + len(flags)]
        if norm is None:
            read.append(float(grad_norm) if grad_norm is not None else float("nan"))
        return read

    def signal_callback(self) -> StopOnSignal | None:
        """The run's StopOnSignal, if one is registered (llmjepa-train adds it)."""
        return next((c for c in self.callback_handler.callbacks if isinstance(c, StopOnSignal)), None)

    def maybe_print_debug(self, plan: ViewPlan, ce_sum: torch.Tensor, loss: torch.Tensor, cos: Any) -> None:
        self.microbatches_seen += 1
        if self.state.global_step >= self.loss_config.debug or not self.is_world_process_zero():
            return
        from .debug import print_microbatch  # only needed with --debug

        print_microbatch(self.microbatches_seen - 1, plan, ce_sum, loss, cos, self.processing_class)


def rotate_published(trainer: JepaTrainer, run_dir: str) -> None:
    """save_total_limit over the published checkpoints (the Trainer's own rotation saw the staging folder)."""
    try:
        from transformers.trainer_utils import rotate_checkpoints
    except ImportError:  # transformers < 5.2x: a Trainer method
        trainer._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        return
    rotate_checkpoints(
        output_dir=run_dir,
        save_total_limit=trainer.args.save_total_limit,
        best_model_checkpoint=trainer.state.best_model_checkpoint,
        use_mtime=True,
    )
