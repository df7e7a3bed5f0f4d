"""hypercl.bench.land: a finished run is committed with its summary and README table, nothing else."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hypercl.bench.land import land_all, main, pending
from hypercl.bench.readme import table_of

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "results" / "split-mnist"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "tests@hypercl")
    git(repo, "config", "user.name", "tests")
    (repo / "README.md").write_text(
        "# r\n\n<!-- results: results/x/summary.json -->\nstale\n<!-- /results -->\n\n"
        "<!-- results: results/y/summary.json -->\nleft alone\n<!-- /results -->\n"
    )
    (repo / "notes.txt").write_text("first\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    return repo


def finish_run(repo: Path, name: str = "hypercl-seed0.json") -> Path:
    """A run as the runner leaves it: its JSON, then the summary written after it."""
    runs = repo / "results" / "x" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f".{name}.abc.tmp").write_text("{half a file")  # the runner's atomic write, mid-way
    shutil.copy(SOURCE / "runs" / name, runs / name)
    shutil.copy(SOURCE / "summary.json", repo / "results" / "x" / "summary.json")
    (repo / "results" / "x" / "summary.md").write_text("table\n")
    return runs / name


def test_a_finished_run_lands_alone_with_its_table(repo):
    # The user's own work in the checkout: a README draft and a staged file, neither to be committed.
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\ndraft paragraph\n")
    (repo / "notes.txt").write_text("staged edit\n")
    git(repo, "add", "notes.txt")
    run = finish_run(repo)

    landed = land_all(repo, ["results/x"])

    assert len(landed) == 1 and landed[0].endswith("results/x/runs/hypercl-seed0.json")
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").split())
    assert files == {"README.md", "results/x/runs/hypercl-seed0.json", "results/x/summary.json", "results/x/summary.md"}
    record = json.loads(run.read_text())
    subject = git(repo, "log", "-1", "--format=%s").strip()
    assert subject == (f"Run landed in results/x: hypercl-seed0.json (final {100 * record['final_avg_acc']:.2f} %, "
                       f"BWT {100 * record['bwt']:+.2f})")  # fmt: skip
    assert record["command"] in git(repo, "log", "-1", "--format=%b")
    table = table_of(json.loads((SOURCE / "summary.json").read_text()))
    committed = git(repo, "show", "HEAD:README.md")
    assert table in committed and "stale" not in committed and "left alone" in committed
    assert "draft paragraph" not in committed and git(repo, "show", "HEAD:notes.txt") == "first\n"
    working = (repo / "README.md").read_text()
    assert table in working and "draft paragraph" in working  # the same table, the draft kept
    # What was staged is still staged; the landed files are clean; nothing is left to land.
    assert git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]
    assert git(repo, "status", "--porcelain", "--", "results/x/runs/hypercl-seed0.json") == ""
    assert land_all(repo, ["results/x"]) == []


def test_a_run_waits_for_the_summary_written_after_it(repo):
    run = finish_run(repo)
    summary = repo / "results" / "x" / "summary.json"
    os.utime(summary, (run.stat().st_mtime - 10,) * 2)  # the runner has not rewritten it yet
    assert pending(repo, "results/x") == []
    os.utime(summary, None)
    assert pending(repo, "results/x") == ["results/x/runs/hypercl-seed0.json"]


def test_a_rerun_lands_as_a_change_and_head_keeps_its_history(repo, monkeypatch, capsys):
    finish_run(repo)
    monkeypatch.chdir(repo)
    assert main(["results/x", "--once"]) == 0
    first = git(repo, "rev-parse", "HEAD").strip()
    run = repo / "results" / "x" / "runs" / "hypercl-seed0.json"
    record = json.loads(run.read_text())
    record["final_avg_acc"] = 0.5
    run.write_text(json.dumps(record))
    os.utime(repo / "results" / "x" / "summary.json", None)
    assert main(["results/x", "--once"]) == 0
    assert git(repo, "rev-parse", "HEAD~1").strip() == first
    assert "final 50.00 %" in git(repo, "log", "-1", "--format=%s")
    assert capsys.readouterr().out.count("landed ") == 2


def test_a_folder_outside_the_checkout_is_refused(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "elsewhere")])
    assert "is not inside the checkout" in capsys.readouterr().err
