"""llmjepa-train's checked flags -> the run's mode and configs, in one place.

`mode_of` names the training mode once (a `Mode`, not a bag of booleans read in many places); `derive` makes
every config the layers below take (ViewConfig, LossConfig, StpConfig, RunOptions) from the flags. Nothing
below commands/ sees the flags' Namespace: they get these configs.
"""

import argparse
from dataclasses import dataclass
from enum import Enum

from ..training.factory import RunOptions
from ..training.trainer import LossConfig
from ..views.encoding import ViewConfig
from ..views.stp import StpConfig
from .stp_flags import stp_config


class Mode(str, Enum):
    """The training mode a run's flags choose (checked: train.check_args refuses mixtures)."""

    REGULAR = "regular"  # --regular: plain SFT, no views
    VIEW_JEPA = "view_jepa"  # upstream finetune.py: Text -> Code views (the default)
    STEP_JEPA = "step_jepa"  # the Step-JEPA fork: --num_prediction_steps N (--view_based_jepa: N = 1)
    STP = "stp"  # upstream stp.py: --linear, view 1 alone


def mode_of(args: argparse.Namespace) -> Mode:
    """The mode of checked flags (after check_args, which turns --view_based_jepa into N = 1)."""
    if getattr(args, "linear", None) is not None:
        return Mode.STP
    if args.regular:
        return Mode.REGULAR
    return Mode.STEP_JEPA if args.num_prediction_steps > 0 else Mode.VIEW_JEPA


@dataclass(frozen=True)
class Derived:
    """Everything a run's flags decide for the layers below commands/."""

    mode: Mode
    view: ViewConfig
    loss: LossConfig
    stp: StpConfig | None
    options: RunOptions


def derive(args: argparse.Namespace) -> Derived:
    """The run's configs from its checked flags (the one mapping from flags to configs)."""
    mode = mode_of(args)
    stp = stp_config(args)
    return Derived(mode, view_config_of(args, mode, stp), loss_config_of(args, mode), stp, run_options_of(args))


def view_config_of(args: argparse.Namespace, mode: Mode, stp: StpConfig | None) -> ViewConfig:
    labels = "all" if args.train_all else "upstream" if args.upstream_labels else "assistant"
    return ViewConfig(
        regular=mode is Mode.REGULAR,
        predictors=args.predictors,
        last_token=args.last_token,
        num_prediction_steps=args.num_prediction_steps,
        localized_masks=args.localized_masks,
        isolated_predictors=args.isolated_predictors,
        include_last_step_target=args.include_last_step_target,
        step_separator=args.step_separator,
        additive_mask=args.additive_mask,
        additive_positions=args.additive_mask_positions,
        front_pred=args.front_pred,
        reverse_pred=args.reverse_pred,
        plain=args.plain,
        merge_system="gemma" in args.model_name.lower(),
        labels=labels,
        max_length=args.max_length,
        stp=stp,
        view_based_jepa=args.view_based_jepa,
        unmask_user=args.unmask_user,
        entropy_top_k=args.entropy_top_k if args.entropy_filter else 0,
        entropy_window=args.entropy_context_window,
        jepa_layer=-1 if mode is Mode.STP else args.jepa_layer,  # STP reads its layer itself (StpConfig.layer)
        drop_long_prompts=getattr(args, "drop_long_prompts", True),  # RunFolderArguments (commands/arguments.py)
        label_turns=getattr(args, "label_turns", "all"),  # DatasetArguments (commands/arguments.py)
        jepa_turns=getattr(args, "jepa_turns", "last"),
    )


def loss_config_of(args: argparse.Namespace, mode: Mode) -> LossConfig:
    kind = "l2" if args.jepa_l2 else "mse" if args.jepa_mse else "infonce" if args.infonce else "cosine"
    return LossConfig(
        regular=mode is Mode.REGULAR,
        lbd=args.lbd,
        gamma=args.gamma,
        jepa_kind=kind,
        jepa_ratio=args.jepa_ratio,
        seed=args.finetune_seed,
        debug=args.debug,  # fused_pair_loss: None, the factory decides (training/factory.py)
    )


def run_options_of(args: argparse.Namespace) -> RunOptions:
    """The flags that say how the run executes, for the factory (training/factory.py)."""
    return RunOptions(
        impl=args.impl,
        attention_backend=getattr(args, "attention_backend", None),  # resolved by train.check_args
        kernel_check=getattr(args, "kernel_check", "auto"),  # llmjepa/execution/kernel_check.py
        linear_predictor_from=args.model_name if getattr(args, "load_lp", False) else None,
    )
