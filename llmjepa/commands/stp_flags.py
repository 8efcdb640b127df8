"""llmjepa-train's STP flags (upstream stp.py's; defined in arguments.StpArguments): their checks and the StpConfig
they make."""

import math
import os
from typing import Any

from ..errors import UserError
from ..views.stp import StpConfig

# ---- flags ----------------------------------------------------------------------------------------------
RANDOM_SPAN_FLAGS = (
    "random_span_zero",
    "random_span_e2e",
    "random_span_all",
    "random_span_draw_both",
    "random_span_uniform",
)


# Upstream stp.py (6d7d0d1, 2026-02-27) builds the <|mask|> views in forward() but reads them nowhere
# that runs: without --linear, compute_loss indexes the views before forward() builds them (KeyError);
# with --linear, the linear branch ignores them (the loss is --linear's alone; only its random_span draws
# shift). There is no meaning to reproduce, so the flags are refused rather than given one of ours.
MASK_REFUSED = (
    "upstream stp.py builds the <|mask|> views but never uses them (a KeyError without --linear; ignored "
    "with it), so llmjepa has no upstream meaning to reproduce and refuses the flag"
)


def check_stp_args(args: Any) -> None:
    """STP's flags: ranges, and combinations upstream ignores silently or fails on."""
    mode = args.linear
    masks = [f"--{f}" for f in ("random_span_mask", "random_span_mask_recover") if getattr(args, f)]
    if masks:
        raise UserError(f"{', '.join(masks)}: {MASK_REFUSED}")
    if not math.isfinite(args.min_lbd) or args.min_lbd < 0:
        raise UserError(f"--min_lbd {args.min_lbd}: must be a finite number >= 0")
    if args.random_span_times < 1:
        raise UserError(f"--random_span_times {args.random_span_times}: must be >= 1")
    if args.random_span_max_length == 0 or args.random_span_max_length < -1:
        raise UserError(f"--random_span_max_length {args.random_span_max_length}: must be >= 1, or -1 (no limit)")
    stp_only = ["linear_predictor", "load_lp", "lbd_warmup"] + list(RANDOM_SPAN_FLAGS)
    given = [f"--{f}" for f in stp_only if getattr(args, f)]
    given += ["--length_adjustment"] * (args.length_adjustment is not None)
    given += ["--random_span_times"] * (args.random_span_times != 1)
    given += ["--random_span_max_length"] * (args.random_span_max_length != -1)
    given += ["--min_lbd"] * (args.min_lbd != 0)
    if mode is None:
        if given:
            raise UserError(f"{', '.join(given)} apply to --linear (STP) only")
        return
    if mode != "random_span":
        span_flags = [f for f in given if f.startswith(("--random_span", "--length_adjustment"))]
        if span_flags:
            raise UserError(f"{', '.join(span_flags)} apply to --linear random_span, not --linear {mode}")
    views = ["--regular"] * args.regular + ["--num_prediction_steps"] * (args.num_prediction_steps != 0)
    view_flags = ("additive_mask", "front_pred", "reverse_pred", "jepa_l2", "infonce")
    views += [f"--{f}" for f in view_flags if getattr(args, f)]
    views += ["--predictors"] * (args.predictors != 0) + ["--jepa_ratio"] * (args.jepa_ratio > 0)
    views += ["--isolated_predictors"] * bool(getattr(args, "isolated_predictors", False))
    if views:
        raise UserError(f"--linear {mode} runs view 1 alone; it contradicts {', '.join(views)}")
    if mode == "curvature" and (args.jepa_mse or args.linear_predictor):
        raise UserError("--linear curvature has no predictor or target: --jepa_mse and --linear_predictor do not apply")
    if args.random_span_draw_both and args.random_span_uniform:
        raise UserError("--random_span_draw_both and --random_span_uniform choose different draws; give one")
    if args.random_span_uniform and (args.random_span_zero or args.random_span_max_length != -1):
        raise UserError(
            "--random_span_uniform draws over all spans; --random_span_zero and --random_span_max_length ignored"
        )
    if args.jepa_mse and args.length_adjustment is not None:
        raise UserError("--length_adjustment weights the cosine loss; upstream's --jepa_mse ignores it")
    if args.load_lp and not args.linear_predictor:
        raise UserError("--load_lp loads the linear predictor: give --linear_predictor too")
    if args.load_lp and not os.path.isdir(args.model_name):
        raise UserError(f"--load_lp reads the linear predictor from a local --model_name; {args.model_name} is none")
    if args.load_lp:
        from ..execution.stp import lp_weight_from

        lp_weight_from(args.model_name)  # before the model loads: a missing predictor fails in a second
    if args.linear_predictor and args.lora:
        raise UserError("--linear_predictor with --lora: the adapter checkpoint would not hold the predictor")
    if args.lbd_warmup and args.min_lbd > args.lbd:
        raise UserError(f"--min_lbd {args.min_lbd} above --lbd {args.lbd}: the warm-up rises to --lbd")


def stp_config(args: Any) -> StpConfig | None:
    if getattr(args, "linear", None) is None:
        return None
    return StpConfig(
        mode=args.linear,
        jepa_mse=args.jepa_mse,
        length_adjustment=args.length_adjustment,
        times=args.random_span_times,
        zero=args.random_span_zero,
        max_length=args.random_span_max_length,
        draw_both=args.random_span_draw_both,
        uniform=args.random_span_uniform,
        all_tokens=args.random_span_all,
        across_gap=args.random_span_e2e,
        layer=args.jepa_layer,
        linear_predictor=args.linear_predictor,
        lbd_warmup=args.lbd_warmup,
        min_lbd=args.min_lbd,
        lbd=args.lbd,
        seed=args.finetune_seed,
    )
