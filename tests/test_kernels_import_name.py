"""The kernels are the package `llmjepa_kernels`; nothing in the repository is importable as `kernels`, the name
of PyPI's package that transformers (5.25 and later) depends on and probes for."""

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
# where `import kernels` resolves: a file outside the repository, or NONE where the package is not installed
WHERE_KERNELS = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s is not None else 'NONE')"


def run_python(code: str, cwd: Path) -> list[str]:
    # `python -c` puts the working directory first on sys.path, as an interactive session from the repo would.
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"cwd={cwd}: {result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()


def test_nothing_in_the_repo_root_is_named_kernels() -> None:
    assert not (REPO_ROOT / "kernels").exists() and not (REPO_ROOT / "kernels.py").exists()


def test_import_kernels_from_the_repo_root_is_the_installed_package(tmp_path: Path) -> None:
    from_root = run_python(WHERE_KERNELS, REPO_ROOT)[-1]
    from_elsewhere = run_python(WHERE_KERNELS, tmp_path)[-1]
    assert from_root == from_elsewhere
    # the installed package lives in site-packages (a virtual environment may sit inside the checkout)
    assert from_root == "NONE" or "site-packages" in Path(from_root).parts


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
    assert paths[0] == paths[1]  # the same package, not a stray copy found via the cwd
