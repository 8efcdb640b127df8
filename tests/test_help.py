"""llmjepa-train --help: every option described with its default said once, grouped, and printed without
importing torch (the TrainingArguments group is read from transformers' source)."""

import subprocess
import sys

import pytest

from llmjepa.commands.hf_args import PREFIX, training_fields, training_fields_from_source
from llmjepa.commands.train import build_parser

TRAINING_GROUP = "transformers.TrainingArguments"


def options(parser) -> list:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def help_of(parser, action) -> str:
    return parser._get_formatter()._expand_help(action)


def test_every_option_is_described_with_one_default() -> None:
    parser = build_parser(help_only=True)
    ours = {id(a) for g in parser._action_groups if not g.title.startswith(TRAINING_GROUP) for a in g._group_actions}
    for action in options(parser):
        text = help_of(parser, action)
        name = action.option_strings[0]
        assert text.strip(), f"{name} has no help"
        assert text.count("(default: ") <= 1, f"{name}: {text}"
        assert "default" in text.lower(), f"{name} says no default: {text}"
        if id(action) in ours:  # our own texts say it exactly once
            assert text.lower().count("default") == 1, f"{name}: {text}"


def test_the_groups_are_upstreams_llmjepas_and_training_arguments() -> None:
    titles = [g.title for g in build_parser(help_only=True)._action_groups if g._group_actions]
    assert any("(upstream)" in t for t in titles) and "llmjepa" in titles
    assert titles[-1].startswith(TRAINING_GROUP)


def test_help_lists_the_flags_the_parser_parses() -> None:
    """--help's TrainingArguments group comes from transformers' source text; the parser's from
    HfArgumentParser: the same options, destinations, help and kinds."""
    shown = {(o, a.dest, type(a).__name__) for a in options(build_parser(help_only=True)) for o in a.option_strings}
    parsed = {(o, a.dest, type(a).__name__) for a in options(build_parser()) for o in a.option_strings}
    assert shown == parsed
    real = {(tuple(f.names), f.store_false): f.help for f in training_fields()}
    read = {(tuple(f.names), f.store_false): f.help for f in training_fields_from_source()}
    assert real == read and len(real) > 100
    assert all(PREFIX + "output_dir" != a.dest for a in options(build_parser()))  # ours wins: --output_dir


@pytest.mark.parametrize("argv", [["--help"], ["--lbd", "0.5", "-h"]])
def test_help_imports_no_torch(argv: list[str]) -> None:
    """transformers.HfArgumentParser is imported (it makes the parser); torch and TrainingArguments are not."""
    code = (
        "import sys\nfrom llmjepa.commands.train import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers.training_args') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]
    assert "--num_prediction_steps" in result.stdout and "--lr_scheduler_type" in result.stdout
