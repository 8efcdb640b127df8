"""PNG plots of per-step curves (matplotlib, headless). matplotlib is optional (`pip install 'llmjepa[plot]'`):
without it a plot is skipped with a one-line note, and the run's other outputs are unchanged."""

import sys
from pathlib import Path
from typing import Any


def pyplot(path: Path, prog: str) -> Any:
    """matplotlib.pyplot with the headless backend, or None (after a note that `path` is skipped)."""
    try:
        import matplotlib
    except ImportError:
        print(f"{prog}: matplotlib is not installed, so no {path} (pip install 'llmjepa[plot]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, series: dict[str, list[dict]], keys: tuple[str, ...], title: str) -> bool:
    """One panel per key; one line per named run (records as in metrics.jsonl). False: no matplotlib."""
    plt = pyplot(path, title.split()[0] if title.strip() else "llmjepa")  # the note names the program
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in series.items():
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="." if len(points) < 60 else None)
        ax.set_xlabel("optimizer step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
