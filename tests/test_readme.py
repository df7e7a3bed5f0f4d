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


def test_every_results_table_in_the_readme_is_its_summary(capsys):
    from hypercl.bench.readme import BLOCK, main

    sources = [m["source"] for m in BLOCK.finditer((ROOT / "README.md").read_text())]
    assert {"results/split-mnist/summary.json", "results/split-cifar100-cpu/summary.json"} <= set(sources)
    assert main(["--check", "--readme", str(ROOT / "README.md"), "--root", str(ROOT)]) == 0, capsys.readouterr().err


def test_a_stale_readme_table_is_named_and_rewritten(tmp_path, capsys):
    import shutil

    from hypercl.bench.readme import main, table_of

    (tmp_path / "r").mkdir()
    shutil.copy(ROOT / "results" / "split-mnist" / "summary.json", tmp_path / "r" / "summary.json")
    fresh = table_of(__import__("json").loads((tmp_path / "r" / "summary.json").read_text()))
    stale = fresh.replace("| hypercl | ", "| hypercl | 1", 1)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n<!-- results: r/summary.json -->\n{stale}<!-- /results -->\n\nafter\n")
    argv = ["--readme", str(readme), "--root", str(tmp_path)]
    assert main([*argv, "--check"]) == 1
    assert "the table from r/summary.json differs" in capsys.readouterr().err
    assert main(argv) == 0 and "1 table(s) rewritten" in capsys.readouterr().out
    assert readme.read_text() == f"intro\n\n<!-- results: r/summary.json -->\n{fresh}<!-- /results -->\n\nafter\n"
    assert main([*argv, "--check"]) == 0
    (tmp_path / "r" / "summary.json").unlink()
    assert main([*argv, "--check"]) == 2 and "cannot read its summary" in capsys.readouterr().err


def test_the_quick_table_is_what_make_split_mnist_runs_today():
    """The README's quick-preset table comes from results/split-mnist-quick-reference, whose runs
    must have the settings `make split-mnist` uses now: a change to the quick preset fails here
    until the reference is run again."""
    import json

    from hypercl.bench.cli import _matches
    from hypercl.bench.presets import preset

    readme = (ROOT / "README.md").read_text()
    assert "<!-- results: results/split-mnist-quick-reference/summary.json -->" in readme
    make = (ROOT / "Makefile").read_text()
    assert "hypercl-bench split-mnist --preset quick --resume" in make
    budget = {"preset": "quick", "scenario": "task", "n_tasks": 5, "settings": preset("split-mnist", "quick").to_dict()}
    runs = sorted((ROOT / "results" / "split-mnist-quick-reference" / "runs").glob("*.json"))
    records = [json.loads(p.read_text()) for p in runs]
    assert sorted(r["strategy"] for r in records) == sorted(["hypercl", "naive", "ewc", "si", "lwf", "replay", "joint"])
    for path, record in zip(runs, records):
        assert record["seed"] == 0 and record["benchmark"] == "split-mnist", path.name
        assert record["command"].startswith("hypercl-bench split-mnist --preset quick"), record["command"]
        assert _matches(record, budget), f"{path.name} ran with other settings than today's quick preset"


def test_a_grid_still_landing_shows_each_strategys_number_of_seeds():
    from hypercl.bench.results import markdown_table, summarize

    def run(strategy, seed, acc):
        acc_matrix = [[acc, None], [acc, acc]]
        return {"strategy": strategy, "seed": seed, "acc": acc_matrix, "final_avg_acc": acc, "bwt": 0.0,
                "forgetting": 0.0, "time_per_step_ms": 10.0}  # fmt: skip

    meta = {"benchmark": "b", "scenario": "task", "preset": "paper", "command": "c"}
    partial = markdown_table(summarize([run("hypercl", 0, 0.9), run("hypercl", 1, 0.8), run("naive", 0, 0.5)], **meta))
    assert "| strategy | seeds | final avg acc (%) |" in partial
    assert "| hypercl | 2 | 85.00 ± 7.07 |" in partial and "| naive | 1 | 50.00 |" in partial
    full = markdown_table(summarize([run("hypercl", 0, 0.9), run("naive", 0, 0.5)], **meta))
    assert "seeds |" not in full and "| naive | 50.00 |" in full
