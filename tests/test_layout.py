"""The package's layout (docs/architecture.md): layers that import only downward, no import circle, and
0.1's flat module names still importable, for one release, with a DeprecationWarning."""

import ast
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmjepa"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports() -> dict[str, set[str]]:
    """Every llmjepa module -> the llmjepa modules it imports, anywhere in it (function-level included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([base] if base else []))
                wanted = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            found |= {w for w in wanted if w.split(".")[0] == "llmjepa" and w != name}
        graph[name] = found
    return graph


def test_no_import_circle_among_llmjepa_modules() -> None:
    graph = internal_imports()
    known = set(graph)
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] & known):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_no_module_imports_an_old_flat_name() -> None:
    """llmjepa._moved keeps 0.1's names for users; the package itself imports the new ones."""
    from llmjepa._moved import MOVED

    offenders = {name: sorted(set(MOVED) & imported) for name, imported in internal_imports().items()}
    assert {name: old for name, old in offenders.items() if old} == {}


def test_layers_hold_under_import_linter() -> None:
    """pyproject.toml's [tool.importlinter] layers: commands > training | evaluation > execution > views >
    model > default_model > errors | distributed | tokens, function-level imports included."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter is in the test extra)")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("old", ["llmjepa.cli", "llmjepa.fast", "llmjepa.views", "llmjepa.data", "llmjepa.defaults"])
def test_old_module_names_still_import_with_a_deprecation_warning(old: str) -> None:
    from llmjepa._moved import MOVED

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    if old == "llmjepa.views":  # the package's own name now: its public names, and no warning
        assert module.ViewConfig and module.encode_all and module.build_plan and not caught
        return
    assert module is importlib.import_module(MOVED[old])  # the same module object: patching one patches both
    assert module.__spec__.name == MOVED[old]
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)


def test_public_names_and_entry_points_keep_working() -> None:
    import llmjepa
    from llmjepa.commands.train import main

    old_main = importlib.import_module("llmjepa.cli").main  # the 0.1 path of llmjepa-train

    for name in ("JepaTrainer", "LossConfig", "ViewConfig", "load_model", "load_tokenizer", "sample_data_path"):
        assert getattr(llmjepa, name) is not None
    assert old_main is main and llmjepa.sample_data_path().parent.name == "assets"
