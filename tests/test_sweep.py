"""The validation sweep on Ray Tune: trials recorded as they finish, the table, a resume
after Ctrl-C that goes on from the interrupted trial's checkpoint, early stopping marked."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("optuna")

from hypercl.bench.presets import preset  # noqa: E402
from hypercl.bench.sweep import SPACES, main, table, tag_of, with_overrides  # noqa: E402
from hypercl.results import RUN_KEYS  # noqa: E402


def _interrupt_when(check, stop: threading.Event) -> None:
    """Send this process Ctrl-C once ``check()`` holds (Tune's handler takes it in the main thread)."""
    while not stop.is_set():
        if check():
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.02)


def test_a_sweep_writes_its_table_and_resumes_after_ctrl_c(ray_cluster, mnist, tmp_path, capsys):
    args = ["split-mnist", "--preset", "quick", "--strategies", "ewc", "--grace", "1", "--tasks", "2",
            "--steps", "100", "--checkpoint-every", "10", "--workers", "1", "--data-root", str(mnist),
            "--out", str(tmp_path)]  # fmt: skip
    runs, logs = tmp_path / "runs", tmp_path / "logs"

    def second_trial_checkpointed() -> bool:
        done = list(runs.glob("*.json")) if runs.exists() else []
        others = [p for p in logs.glob("ewc-*.log") if done and json.loads(done[0].read_text())["trial_id"] not in p.name]
        return bool(done) and any("checkpoint ewc seed 0: step 20 of task" in p.read_text() for p in others)

    stop = threading.Event()
    watcher = threading.Thread(target=_interrupt_when, args=(second_trial_checkpointed, stop), daemon=True)
    watcher.start()
    try:
        assert main([*args, "--trials", "2"]) == 130
    finally:
        stop.set()
    err = capsys.readouterr().err
    assert "sweep: interrupted; finished trials are in" in err
    (first,) = runs.glob("*.json")
    kept = first.read_bytes()
    assert (tmp_path / "sweep.md").read_text().count("| ewc |") == 1  # the table as it stood

    # The same command goes on: the interrupted trial resumes from its checkpoint; one more
    # trial (--trials 3) then starts, with the two finished ones told to Optuna's sampler.
    assert main([*args, "--trials", "3"]) == 0
    err = capsys.readouterr().err
    assert "ewc: resuming the sweep in" in err
    assert "ewc: 1 trials to run (2 recorded, 2 of them told to the sampler)" in err
    assert first.read_bytes() == kept  # not trained again
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    assert len(records) == 3 and len({r["trial_id"] for r in records}) == 3
    resumed = [p for p in logs.glob("ewc-*.log") if "resuming from" in p.read_text()]
    assert len(resumed) == 1
    trial_id = resumed[0].stem.removeprefix("ewc-")
    assert re.search(rf"resuming from \S+/checkpoints/ewc-{trial_id}\.pt \((step \d+ of task \d|1 tasks done)\)", resumed[0].read_text())
    lo, hi = SPACES["ewc"]["ewc_lambda"].low, SPACES["ewc"]["ewc_lambda"].high
    for r in records:
        assert lo <= r["overrides"]["ewc_lambda"] <= hi
        assert r["evaluated_on"].startswith("validation") and len(r["acc"]) == 2
        assert 0.5 < r["final_avg_acc"] <= 1  # two easy pairs of digits, scored on the validation split
        assert r["config"]["train_steps"] == 200
    text = (tmp_path / "sweep.md").read_text()
    best = max(records, key=lambda r: r["final_avg_acc"])
    assert f"| ewc | {tag_of(best['overrides'])} | {100 * best['final_avg_acc']:.2f} |" in text
    assert text.count("**best**") == 1 and text.count("| ewc |") == 3
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # each trial's checkpoint goes once it is written


def test_the_table_marks_stopped_and_failed_trials_and_the_best(tmp_path):
    base = preset("split-mnist", "quick")
    whole = dict.fromkeys(RUN_KEYS, 0)  # a finished run's record has every key
    trials = [
        {**whole, "si_lambda": 10.0, "final_avg_acc": 0.95, "bwt": -0.01},
        {**whole, "si_lambda": 1.0, "final_avg_acc": 0.97, "bwt": -0.02},
        {"si_lambda": 1e4, "stopped": {"after_tasks": 2, "val_acc": 0.61}},
        {"si_lambda": 1e5, "failed": {"after_tasks": 1, "log": "logs/si-x.log"}},
    ]
    (tmp_path / "runs").mkdir()
    for t in trials:
        overrides = {"si_lambda": t.pop("si_lambda")}
        settings = with_overrides(base, overrides).to_dict()
        t.update(strategy="si", preset="quick", command="python benchmarks/sweep.py split-mnist", overrides=overrides,
                 config={"preset_settings": settings, "n_tasks": 5})  # fmt: skip
        (tmp_path / "runs" / f"si[{tag_of(overrides)}].json").write_text(json.dumps(t))
    rows = [line for line in table(tmp_path, "split-mnist", "quick", base).splitlines() if line.startswith("| si |")]
    assert rows == [
        "| si | si_lambda=1 | 97.00 | -2.00 | **best** |  |",
        "| si | si_lambda=10 | 95.00 | -1.00 |  |  |",
        "| si | si_lambda=1e+04 | stopped after 2 tasks (61.00 so far) | | |  |",
        "| si | si_lambda=1e+05 | failed after 1 tasks (log: logs/si-x.log) | | |  |",
    ]


@pytest.mark.parametrize("flag", ["--trials", "--grace", "--checkpoint-every"])
def test_a_sweep_count_below_one_is_one_clear_message(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["split-mnist", "--strategies", "ewc", "--out", str(tmp_path / "s"), flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
