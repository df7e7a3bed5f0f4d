"""Every notebook runs top to bottom on a small budget, on real data and the committed results."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from hypercl.data import data_root

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_tested():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_forgetting_curves", "03_beyond"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_draws(path, monkeypatch):
    root = data_root()
    if path.stem != "02_forgetting_curves" and (root is None or not (root / "MNIST" / "raw").is_dir()):
        pytest.skip("no MNIST under $HYPERCL_DATA_ROOT")
    if root is not None:  # the kernel runs in notebooks/: relative roots would point elsewhere
        monkeypatch.setenv("HYPERCL_DATA_ROOT", str(root.resolve()))
    monkeypatch.setenv("HYPERCL_NOTEBOOK_STEPS", "5")
    monkeypatch.setenv("HYPERCL_RESULTS", str(ROOT / "results"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(path, as_version=4)
    # raises CellExecutionError, with the cell and traceback, on the first failing cell
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs) + "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert not [o for o in outputs if o.output_type == "error"]
    assert str(ROOT) not in json.dumps(outputs), "an output shows a path of this machine (a warning?)"
    expected = {"01_quickstart": 2, "02_forgetting_curves": 8 * 4, "03_beyond": 2}[path.stem]
    assert len(images) >= expected, f"{path.stem}: {len(images)} plots, expected {expected}"
    if path.stem == "02_forgetting_curves":  # every committed results folder is read and shown
        shown = ("split-mnist", "split-mnist-class", "split-mnist-domain", "split-cifar100-cpu")
        shown += ("pmnist-10", "pmnist-10-tuned", "pmnist-10-class", "pmnist-10-domain")
        for folder in shown:
            assert folder in text
        assert ": not in " not in text
    elif path.stem == "01_quickstart":  # numbers the notebook computed, read back from its outputs
        assert float(re.search(r"compression ratio ([0-9.]+)", text)[1]) < 1
        assert 55 < float(re.search(r"final average accuracy ([0-9.]+) %", text)[1]) <= 100
    else:  # even 5 steps per task make each network better on its own task than on the others
        own, other = re.search(r"own task: ([0-9.]+) % on average; other tasks: ([0-9.]+) %", text).groups()
        assert float(own) > float(other) + 10
