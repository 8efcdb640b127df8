"""llmjepa-sweep: the LLM-JEPA paper's protocol from one config: seeds x settings -> train -> evaluate
-> mean and std accuracy per setting (sweep.md, sweep.json, sweep.png with error bars).

    llmjepa-sweep --output_dir runs/sweep                    # the embedded default, small, CPU minutes
    llmjepa-sweep --config sweep.json --output_dir runs/sweep --launcher "torchrun --nproc_per_node 8"

The config is JSON: {"train_args": [...], "settings": {"regular": ["--regular"], "jepa": [...]},
"seeds": [...], "eval_args": [...]}; train_args and eval_args are llmjepa-train and llmjepa-eval flags.
Each run trains into output_dir/<setting>/seed<s>/model and evaluates into .../eval; a finished run
(its eval/summary.json exists) is not run again, so a stopped sweep continues where it stopped.
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import UserError


def default_config() -> dict:
    """The embedded tiny model on the bundled demo sums (scripts/make_demo_data.py), sized for a few CPU
    minutes: 250 steps leave the model part way up its learning curve (accuracies well between 0 and 1,
    measured in docs/eval.md), so seeds spread and the settings can differ."""
    from ..default_model import demo_data_path

    return {
        "train_args": [
            "--train_file",
            str(demo_data_path("train")),
            "--batch_size",
            "16",
            "--grad_accum",
            "1",
            "--learning_rate",
            "3e-3",
            "--max_train_steps",
            "250",
            "--logging_steps",
            "50",
        ],  # fmt: skip
        "settings": {"regular": ["--regular"], "jepa": ["--num_prediction_steps", "2", "--predictors", "1"]},
        "seeds": [0, 1, 2],
        "eval_args": [
            "--input_file",
            str(demo_data_path("eval")),
            "--max_new_tokens",
            "48",
            "--batch_size",
            "16",
        ],  # fmt: skip
    }


def load_config(path: str | None) -> dict:
    if path is None:
        return default_config()
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    check_config(config, path)
    return config


def check_config(config: dict, path: str) -> None:
    def is_args(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(a, str) for a in value)

    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object")
    for key in ("train_args", "eval_args"):
        if not is_args(config.get(key, [])):
            raise UserError(f'{path}: "{key}" must be a list of strings (command-line flags)')
    settings = config.get("settings")
    if not isinstance(settings, dict) or not settings or not all(is_args(v) for v in settings.values()):
        raise UserError(f'{path}: "settings" must map names to lists of flags, e.g. {{"regular": ["--regular"]}}')
    seeds = config.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f'{path}: "seeds" must be a non-empty list of integers')
    if "--input_file" not in config.get("eval_args", []):
        raise UserError(f'{path}: "eval_args" must give --input_file (the held-out data)')


def flag_value(argv: list[str], flag: str, default: str | None = None) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else default


def run_tool(name: str, argv: list[str], launcher: str | None) -> None:
    """llmjepa-train or llmjepa-eval: in this process, or under the launcher (torchrun) in a child."""
    if launcher:
        script = shutil.which(name)
        if script is None:
            raise UserError(f"--launcher needs {name} on PATH (pip install -e .)")
        code = subprocess.call([*shlex.split(launcher), script, *argv])
    else:
        from . import evaluate
        from . import train as cli

        code = (cli.main if name == "llmjepa-train" else evaluate.main)(argv)
    if code != 0:
        raise UserError(f"{name} {shlex.join(argv)}: exit status {code}")


def one_run(config: dict, setting: str, seed: int, out: Path, launcher: str | None) -> dict:
    run_dir = out / setting / f"seed{seed}"
    model_dir, eval_dir = run_dir / "model", run_dir / "eval"
    summary_path = eval_dir / "summary.json"
    record = {"setting": setting, "seed": seed}
    train_done = run_dir / "train_done.json"
    train_argv = [*config["train_args"], *config["settings"][setting]]
    train_argv += ["--seed", str(seed), "--output_dir", str(model_dir)]
    if not train_done.is_file():
        from ..training.checkpoints import complete_checkpoints

        if complete_checkpoints(model_dir):  # a training cut short: go on from its last checkpoint (docs/faults.md)
            train_argv += ["--resume_from_checkpoint", "latest"]
        t0 = time.perf_counter()
        run_tool("llmjepa-train", train_argv, launcher)
        train_done.write_text(json.dumps({"train_seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    if not summary_path.is_file():
        eval_argv = [*config["eval_args"], "--model_name", str(model_dir), "--output_dir", str(eval_dir)]
        eval_argv += ["--seed", str(seed), "--overwrite", "--no_progress"]
        if "--lora" in train_argv:  # the adapter's base: the training run's model (its weights from --seed)
            eval_argv += ["--adapter_base", flag_value(train_argv, "--model_name", "llmjepa/tiny-llama")]
        run_tool("llmjepa-eval", eval_argv, launcher)
    summary = json.loads(summary_path.read_text())
    record.update({k: summary.get(k) for k in ("accuracy", "correct", "n")})
    record["train_seconds"] = json.loads(train_done.read_text())["train_seconds"]
    record["eval_seconds"] = summary.get("seconds")
    return record


def aggregate(runs: list[dict], settings: list[str]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) of the accuracy per setting."""
    out = {}
    for name in settings:
        acc = [r["accuracy"] for r in runs if r["setting"] == name]
        std = float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0
        out[name] = {"mean": float(np.mean(acc)), "std": std, "seeds": len(acc), "accuracies": acc}
    return out


def markdown(stats: dict, runs: list[dict]) -> str:
    lines = ["| setting | accuracy mean | std | seeds | per seed |", "|---|---|---|---|---|"]
    for name, s in stats.items():
        per_seed = ", ".join(f"{a:.4f}" for a in s["accuracies"])
        lines.append(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {s['seeds']} | {per_seed} |")
    n = runs[0]["n"] if runs else 0
    return "\n".join(lines) + f"\n\nstd: sample standard deviation over seeds (ddof=1); {n} eval examples per run.\n"


def bar_plot(path: Path, stats: dict, title: str) -> None:
    from .plots import pyplot

    plt = pyplot(path, "llmjepa-sweep")
    if plt is None:  # matplotlib is optional: the note is printed, sweep.md and sweep.json are written
        return
    names = list(stats)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3.2))
    ax.bar(names, [stats[n]["mean"] for n in names], yerr=[stats[n]["std"] for n in names], capsize=6)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_ylim(0, max(0.05, max(stats[n]["mean"] + stats[n]["std"] for n in names) * 1.2))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmjepa-sweep", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="JSON sweep config (default: the embedded tiny model, CPU-sized)")
    p.add_argument("--output_dir", help="default: a new folder runs/sweep-<date>-<time> (runs/ is git-ignored)")
    p.add_argument("--seeds", help="comma-separated seeds, overriding the config's")
    p.add_argument("--settings", help="comma-separated setting names to run (default: all)")
    p.add_argument("--launcher", help='run each tool under this prefix, e.g. "torchrun --nproc_per_node 8"')
    return p


def sweep(args: argparse.Namespace) -> dict:
    config = load_config(args.config)
    if args.seeds:
        try:
            config["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds {args.seeds}: expected comma-separated integers") from None
    settings = list(config["settings"])
    if args.settings:
        unknown = [s for s in args.settings.split(",") if s not in config["settings"]]
        if unknown:
            raise UserError(f"--settings: {', '.join(unknown)} not in the config ({', '.join(settings)})")
        settings = args.settings.split(",")
    out = Path(args.output_dir or time.strftime("runs/sweep-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    runs = [one_run(config, name, seed, out, args.launcher) for seed in config["seeds"] for name in settings]
    stats = aggregate(runs, settings)
    result = {"config": config, "runs": runs, "settings": stats}
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sweep.md").write_text(markdown(stats, runs))
    dataset = Path(flag_value(config["eval_args"], "--input_file", "")).name
    bar_plot(out / "sweep.png", stats, f"{dataset}: {len(config['seeds'])} seeds")
    print(markdown(stats, runs))
    print(f"llmjepa-sweep: wrote {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        sweep(build_parser().parse_args(argv))
    except UserError as e:
        print(f"llmjepa-sweep: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
