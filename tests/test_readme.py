"""The README's example is the file the main command runs, and it runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hypercl.data import mnist_root

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- quickstart -->\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "README.md must hold one ```python block after <!-- quickstart -->"
    return blocks[0]


def test_readme_example_is_the_quickstart_script():
    assert readme_example() == (ROOT / "benchmarks" / "quickstart.py").read_text()


def test_readme_example_runs_and_prints_per_task_accuracies(tmp_path):
    try:
        root = mnist_root()
    except FileNotFoundError as err:
        pytest.skip(f"the example trains on Split MNIST: {err}")
    env = {**os.environ, "HYPERCL_DATA_ROOT": str(root), "HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", readme_example()], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    accs = re.search(r"accuracy per task: (.*)", run.stdout).group(1).split()
    average = float(re.search(r"average (\S+),", run.stdout).group(1))
    print(run.stdout)
    assert len(accs) == 5
    assert min(map(float, accs)) > 0.97
    assert average > 0.985
