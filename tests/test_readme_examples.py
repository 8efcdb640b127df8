"""The README's Python examples run as written: each ```python block of README.md, extracted and run in a
fresh interpreter in an empty folder (they train the embedded tiny model for a few steps)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2 and all("JepaTrainer(" in b for b in BLOCKS[:2])


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_as_written(tmp_path: Path, index: int) -> None:
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, f"README example {index}:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
