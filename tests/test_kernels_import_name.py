"""The kernels/ folder installs as llmjepa_kernels and must not disturb transformers' probe for the
Hugging Face `kernels` package, which imports the name `kernels` when Python runs from the repo root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE = "import transformers.utils as u; print(u.is_kernels_available())"
IMPORT = (
    "import inspect, llmjepa_kernels as m; print(m.__file__); "
    "print(inspect.isfunction(m.block_causal_attention), inspect.isfunction(m.cosine_jepa_loss))"
)


def run_python(code: str, cwd: Path) -> list[str]:
    # `python -c` puts the working directory first on sys.path, as an interactive session from the repo would.
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"cwd={cwd}: {result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()


def test_is_kernels_available_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    from_root = run_python(PROBE, REPO_ROOT)[-1]
    from_elsewhere = run_python(PROBE, tmp_path)[-1]
    assert from_root in ("True", "False")
    assert from_root == from_elsewhere


def test_llmjepa_kernels_imports_from_repo_root_and_elsewhere(tmp_path: Path) -> None:
    paths = []
    for cwd in (REPO_ROOT, tmp_path):
        path, kinds = run_python(IMPORT, cwd)[-2:]
        assert kinds == "True True", cwd
        paths.append(path)
    assert paths[0] == paths[1]  # the same installed package, not a stray copy found via the cwd


def test_folder_imported_as_kernels_stays_harmless() -> None:
    """What transformers' probe does from the repo root: import `kernels` and look for __version__."""
    code = "import sys, kernels; print(hasattr(kernels, '__version__'), 'transformers' in sys.modules)"
    assert run_python(code, REPO_ROOT)[-1] == "False False"
