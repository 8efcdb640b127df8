"""Packaging: metadata, version, license, declared dependencies against the imports, `python -m llmjepa`, the
optional plot, llmjepa_kernels beside an installed `kernels` package, and the README's CI command."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llmjepa

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# distribution name -> the name the code imports
IMPORT_NAMES = {"flash-attn-4": "flash_attn", "pyyaml": "yaml", "huggingface_hub": "huggingface_hub"}
OWN = {"llmjepa", "llmjepa_kernels"}


def requirement_name(requirement: str) -> str:
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def import_name(requirement: str) -> str:
    name = requirement_name(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def imported_modules(folder: Path) -> dict[str, bool]:
    """Top-level module names imported by the .py files under `folder`: name -> imported at module level
    (True) or only inside functions or conditionals (False)."""
    found: dict[str, bool] = {}
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                found[root] = found.get(root, False) or id(node) in top
    return found


def third_party(modules: dict[str, bool]) -> dict[str, bool]:
    return {m: top for m, top in modules.items() if m not in sys.stdlib_module_names and m not in OWN}


def run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def test_version_and_license() -> None:
    assert llmjepa.__version__ == importlib.metadata.version("llmjepa")
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    for package in ("llmjepa", "llmjepa_kernels"):
        assert (ROOT / package / "py.typed").is_file()


def test_every_dependency_is_imported_and_every_import_declared() -> None:
    """A declared dependency the code never imports is dropped; what the code imports is declared, the
    unconditional imports in `dependencies`, optional ones (inside a function or behind a check) in an extra."""
    code = third_party({**imported_modules(ROOT / "llmjepa_kernels"), **imported_modules(ROOT / "llmjepa")})
    required = {import_name(r) for r in PROJECT["dependencies"]}
    extras = {name: {import_name(r) for r in reqs} for name, reqs in PROJECT["optional-dependencies"].items()}
    assert required <= set(code), f"declared but never imported: {required - set(code)}"
    optional = set().union(*(extras[e] for e in ("plot", "triton", "flash", "eval")))
    undeclared = {m for m in code if m not in required and m not in optional}
    assert not undeclared, f"imported but not declared: {undeclared}"
    # every module-level import of llmjepa is a hard dependency (the kernels' triton is behind find_spec)
    llmjepa_top = {m for m, top in third_party(imported_modules(ROOT / "llmjepa")).items() if top}
    assert llmjepa_top <= required, f"imported at module level but optional: {llmjepa_top - required}"
    extra_code = third_party({**imported_modules(ROOT / "bench"), **code})
    for name in ("plot", "triton", "flash", "eval"):
        assert extras[name] <= set(extra_code), f"extra {name}: {extras[name] - set(extra_code)} never imported"


def test_python_m_llmjepa_trains_without_matplotlib(tmp_path: Path) -> None:
    """`python -m llmjepa` is llmjepa-train; with matplotlib missing the run succeeds and says the plot is skipped."""
    blocker = tmp_path / "no_matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked by this test')\n")
    out = tmp_path / "run"
    result = run(
        [sys.executable, "-m", "llmjepa", "--regular", "--max_train_steps", "2", "--output_dir", str(out)],
        tmp_path,
        {"PYTHONPATH": str(blocker.parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matplotlib is not installed, so no" in result.stderr and "llmjepa[plot]" in result.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "model.safetensors").is_file() and not (out / "loss_curve.png").exists()


def test_python_m_llmjepa_is_llmjepa_train(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "llmjepa", "--batch_size", "0"], tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "llmjepa-train: error: --batch_size 0: must be >= 1"


FAKE_KERNELS = '''
"""Stands in for Hugging Face's `kernels` package (tests/test_packaging.py); a version transformers
does not use, so transformers leaves it alone."""
__version__ = "0.1.0"


def get_kernel(repo_id):
    return f"fake kernel {repo_id}"
'''

# Imported at start-up (on PYTHONPATH): at exit, say where `kernels` resolves in the process that ran the script.
SITECUSTOMIZE = """
import atexit


def _report():
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    from kernels import get_kernel

    print("KERNELS", spec.origin, get_kernel("x"), flush=True)


atexit.register(_report)
"""


@pytest.fixture()
def fake_kernels_site(tmp_path: Path) -> Path:
    """A site folder holding an installed `kernels` package (with its dist-info, as pip leaves it)."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(FAKE_KERNELS)
    info = site / "kernels-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.1.0\n")
    return site


def test_train_py_leaves_the_name_kernels_to_the_installed_package(fake_kernels_site: Path) -> None:
    (fake_kernels_site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    result = run([sys.executable, "train.py", "--help"], ROOT, {"PYTHONPATH": str(fake_kernels_site)})
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("KERNELS ")]
    assert line == [f"KERNELS {fake_kernels_site / 'kernels' / '__init__.py'} fake kernel x"], result.stdout[-2000:]


def test_installed_kernels_package_wins_from_the_repo_root(fake_kernels_site: Path) -> None:
    """`python -c` from the repo root puts the root first on sys.path: nothing there is named `kernels`, so the
    installed package answers to that name; llmjepa_kernels is the repo's."""
    code = textwrap.dedent(
        """
        from kernels import get_kernel
        import kernels, llmjepa_kernels, inspect
        print(kernels.__file__, get_kernel("x"), kernels.__version__)
        print(llmjepa_kernels.__file__, inspect.isfunction(llmjepa_kernels.cosine_jepa_loss))
        """
    )
    result = run([sys.executable, "-c", code], ROOT, {"PYTHONPATH": str(fake_kernels_site)})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first == f"{fake_kernels_site / 'kernels' / '__init__.py'} fake kernel x 0.1.0"
    assert second == f"{ROOT / 'llmjepa_kernels' / '__init__.py'} True"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run takes the README's test command from its fenced bash block."""
    result = run(["bash", str(ROOT / ".ci" / "run"), "--print"], ROOT)
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```bash\n{command}\n```" in readme
    assert command.endswith("pytest -q") and '-e ".[test]"' in command
    indented = [line for line in readme.splitlines() if line.startswith("    ") and "pytest" in line]
    assert not indented, "the README's commands are in fenced bash blocks"


def test_ci_floor_installs_the_floors_pyproject_names() -> None:
    """One source of truth: .ci/floor pins exactly the floors of pyproject.toml (transformers, the triton extra;
    torch at 2.13.0, the oldest CPU build reachable, while pyproject's torch floor is the GPU image's)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["triton"]
    floors = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", requirement)
        if match:
            floors[match.group(1)] = match.group(2)
    assert {"torch", "transformers", "triton"} <= floors.keys(), floors
    for name in ("transformers", "triton"):  # every other [test]/[triton] bound must not exceed the floor job's pin
        bounds = [r for r in project["optional-dependencies"]["test"] if r.startswith(f"{name}>=")]
        assert all(r == f"{name}>={floors[name]}" for r in bounds), (bounds, floors[name])
    result = run(["bash", str(ROOT / ".ci" / "floor"), "--print"], ROOT)
    assert result.returncode == 0, result.stderr
    pins = dict(pin.split("==") for pin in result.stdout.split())
    assert pins == {"torch": "2.13.0", "transformers": floors["transformers"], "triton": floors["triton"]}
    assert tuple(map(int, floors["torch"].split("."))) <= (2, 13), "the floor job's torch is below pyproject's floor"
    assert project["requires-python"] == ">=3.10" and sys.version_info >= (3, 10)


def test_wheel_holds_both_packages_typed_with_license_and_entry_points(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (the checkout stays clean) and read what it holds."""
    import shutil
    import zipfile

    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("llmjepa", "llmjepa_kernels"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w"]
    result = run([*cmd, str(tmp_path / "dist")], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("llmjepa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {"llmjepa/py.typed", "llmjepa_kernels/py.typed", "llmjepa/__main__.py"} <= names
    assert {"llmjepa_kernels/block_causal_attention.py", "llmjepa_kernels/cosine_loss.py"} <= names
    assert "llmjepa/assets/tokenizer.json" in names and f"{info}/licenses/LICENSE" in names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "llmjepa").rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # every subpackage (pyproject's packages lists them)
    assert not any(n.startswith("kernels/") for n in names)  # never installed under the name `kernels`
    assert f"Version: {llmjepa.__version__}" in metadata and "License-Expression: Apache-2.0" in metadata
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    required = [r for r in required if "extra ==" not in r]
    assert sorted(map(requirement_name, required)) == sorted(map(requirement_name, PROJECT["dependencies"]))
    assert "llmjepa-train = llmjepa.commands.train:main" in entry_points
