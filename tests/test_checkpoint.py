"""Checkpoints: a run stopped anywhere and resumed ends exactly where the whole run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from helpers import conflicting_stream

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget
from hypercl.bench.datasets import BenchmarkInfo
from hypercl.bench.cli import main
from hypercl.bench.presets import preset
from hypercl.bench.strategies import STRATEGIES, make_strategy
from hypercl.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore, save_checkpoint

STEPS = 12
INFO = {s: BenchmarkInfo("toy", s, 3, 16, 4) for s in ("task", "class")}


class Stop(Exception):
    """Stands in for the process dying."""


class StopAt:
    """A plugin that 'kills' training right after step ``step`` of experience ``exp``."""

    def __init__(self, exp: int, step: int) -> None:
        self.exp, self.step = exp, step

    def __getattr__(self, name):  # every other hook: nothing
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_counter == self.exp and strategy.clock.train_exp_iterations == self.step:
            raise Stop


def build(name: str, scenario: str, plugins: list, **settings):
    torch.manual_seed(0)
    info = INFO[scenario]
    small = {
        "hidden": (32,),
        "hnet": HyperNetConfig(hidden=(8,), chunk_size=150, task_emb_dim=8, chunk_emb_dim=8),
        "ewc_lambda": 10.0,
        "si_lambda": 10.0,
        "replay_mem": 60,
    }
    p = replace(preset("split-mnist", "quick"), **{**small, **settings})
    return make_strategy(name, info, p, train_mb_size=32, evaluator=EvaluationPlugin(loggers=[]),
                         plugins=[StepBudget(STEPS), *plugins])  # fmt: skip


def train(strategy, stream, start: int = 0) -> dict:
    for exp in stream.train_stream[start:]:
        strategy.train(exp)
    return {k: v.clone() for k, v in strategy.model.state_dict().items()}


def outputs(strategy, stream) -> torch.Tensor:
    strategy.model.eval()
    data = stream.test_stream[0].dataset
    x = torch.stack([data[i][0] for i in range(64)])
    with torch.no_grad():
        return torch.stack([strategy.model(x, torch.full((len(x),), t)) for t in range(3)])


KILLS = {  # (experience, step) killed at, checkpoint every, position resumed from
    "mid": (1, 11, 5, (1, 1, 2, 10)),
    "epoch-end": (1, 9, 4, (1, 0, 8, 8)),
    "end": (2, 5, None, (2, 0, 0, 0)),
}
CASES = [(s, "task") for s in STRATEGIES] + [("hypercl", "class")]


@pytest.mark.parametrize("name,scenario", CASES)
@pytest.mark.parametrize("where", KILLS)
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(name, scenario, where, tmp_path):
    check_resume(lambda plugins: build(name, scenario, plugins), where, tmp_path, joint_like=name in ("joint", "replay"))


@pytest.mark.parametrize("targets", ["stored", "frozen"])
def test_resume_keeps_every_kind_of_regulariser_target(targets, tmp_path):
    def make(plugins):
        torch.manual_seed(0)
        return HyperCL(target=MLP(16, (32,), 4), hnet=HyperNetConfig(hidden=(8,), chunk_size=150, task_emb_dim=8,
                       chunk_emb_dim=8), reg_targets=targets, train_mb_size=32, evaluator=EvaluationPlugin(loggers=[]),
                       plugins=[StepBudget(STEPS), *plugins])  # fmt: skip

    check_resume(make, "mid", tmp_path)


def check_resume(make, where: str, tmp_path, joint_like: bool = False) -> None:
    """Kill a run at ``where`` (see KILLS), resume it into a fresh strategy and compare it with
    a run that never had a checkpoint: same weights, buffers, step count and outputs."""
    stream = conflicting_stream(n_tasks=3)
    whole = make([])
    expected = train(whole, stream)

    path = tmp_path / "run.pt"
    # An experience is 12 steps: two epochs of 8 and 4 batches. Killed in experience 1,
    # 'mid' resumes from step 10 (batch 2 of epoch 1), 'epoch-end' from step 8 (the last
    # batch of epoch 0); killed in experience 2, 'end' resumes after experience 1.
    exp, step, every, position = KILLS[where]
    killed = make([Checkpoint(path, every=every), StopAt(exp, step)])
    with pytest.raises(Stop):
        train(killed, stream)
    ckpt = load_checkpoint(path)
    pos = ckpt["position"]
    assert (pos["experience"], pos["step"]) == (position[0], position[3])
    if not joint_like:  # the joint and replay loaders add earlier tasks' data: longer epochs
        assert (pos["epoch"], pos["batch"]) == position[1:3]

    resumed = make([Checkpoint(path, every=every)])
    start = restore(resumed, ckpt, stream.train_stream)
    assert start == pos["experience"]
    got = train(resumed, stream, start)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert resumed.clock.train_iterations == whole.clock.train_iterations == 3 * STEPS
    assert torch.equal(outputs(resumed, stream), outputs(whole, stream))


def test_the_progress_bar_of_a_resumed_experience_starts_at_its_checkpoint(tmp_path):
    from hypercl.bench.run import ProgressBar

    stream, path = conflicting_stream(n_tasks=3), tmp_path / "run.pt"
    with pytest.raises(Stop):  # killed at step 11 of experience 1; its checkpoint is at step 10
        train(build("naive", "task", [Checkpoint(path, every=5), StopAt(1, 11)]), stream)
    bar = ProgressBar("resumed", STEPS)
    resumed = build("naive", "task", [bar, Checkpoint(path, every=5)])
    start = restore(resumed, load_checkpoint(path), stream.train_stream)
    resumed.train(stream.train_stream[start])
    assert (bar.bar.initial, bar.bar.n) == (10, STEPS)  # the 2 steps left, counted from 10
    resumed.train(stream.train_stream[start + 1])
    assert (bar.bar.initial, bar.bar.n) == (0, STEPS)  # a fresh experience counts from 0


# --------------------------------------------------------------------- the runner, killed
TIMING = {"train_time_s", "time_per_step_ms", "finished_at", "command", "inference_fit_s"}



def test_a_run_killed_with_sigkill_mid_task_resumes_to_identical_results(mnist, tmp_path, capsys):
    args = ["split-mnist", "--strategies", "hypercl", "--steps", "20", "--tasks", "2", "--data-root", str(mnist),
            "--checkpoint-every", "5"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*args, "--out", str(whole)]) == 0

    cmd = [sys.executable, "-m", "hypercl.bench", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "checkpoint hypercl seed 0: step 10 of task 1" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "runs").exists() and (killed / "checkpoints" / "hypercl-seed0.pt").exists()
    capsys.readouterr()

    # Nothing is overwritten unless asked: the run refuses to start over the checkpoint.
    assert main([*args, "--out", str(killed)]) == 2
    assert "holds an unfinished run of hypercl seed 0: pass --resume to continue it" in capsys.readouterr().err
    # A checkpoint from other settings is refused, with the command that wrote it.
    assert main([*args[:3], "--steps", "30", *args[5:], "--out", str(killed), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "with other settings than this command's (steps differ)" in err and "--steps 20" in err

    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert "(step 10 of task 1)" in capsys.readouterr().err
    a, b = (json.loads((d / "runs" / "hypercl-seed0.json").read_text()) for d in (whole, killed))
    assert len(a["acc"]) == 2 and a["config"]["train_steps"] == 40
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


def test_broken_checkpoints_get_one_message_each(tmp_path):
    strategy = build("hypercl", "task", [Checkpoint(tmp_path / "ok.pt")])
    strategy.train(conflicting_stream(n_tasks=3).train_stream[0])
    good = (tmp_path / "ok.pt").read_bytes()
    assert load_checkpoint(tmp_path / "ok.pt")["position"]["experience"] == 1  # read with weights_only=True

    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt is not a readable checkpoint .* truncated or corrupt: delete it"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a hypercl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "old.pt", {**load_checkpoint(tmp_path / "ok.pt"), "version": 0})
    with pytest.raises(CheckpointError, match="is a version 0 checkpoint; this hypercl reads version 1"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")

    naive = build("naive", "task", [])
    with pytest.raises(CheckpointError, match=r"plugins with state are \['HyperCLPlugin', 'StepBudget', 'Clock'\]"):
        restore(naive, load_checkpoint(tmp_path / "ok.pt"), conflicting_stream(n_tasks=3).train_stream)
    wider = build("hypercl", "task", [], hidden=(64,))
    with pytest.raises(CheckpointError, match=r"model does not fit this strategy's.*target\.net\.1\.weight: saved \[32, 16\], this model \[64, 16\]"):
        restore(wider, load_checkpoint(tmp_path / "ok.pt"), conflicting_stream(n_tasks=3).train_stream)
    with pytest.raises(ValueError, match="every must be >= 1 step"):
        Checkpoint(tmp_path / "x.pt", every=0)


def test_a_non_finite_loss_keeps_the_last_good_checkpoint_and_it_resumes(tmp_path):
    from avalanche.benchmarks import tensors_benchmark

    from hypercl.guards import NonFiniteLossError

    good = conflicting_stream(n_tasks=3)
    x, y = torch.full((256, 16), float("nan")), torch.arange(256) % 4
    poisoned = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[(x, y)], task_labels=[1])
    path = tmp_path / "run.pt"
    strategy = build("hypercl", "task", [Checkpoint(path, every=4)])
    strategy.train(good.train_stream[0])
    after_task_0 = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="loss is nan at iteration 1 of experience 0"):
        strategy.train(poisoned.train_stream[0])
    ckpt = load_checkpoint(path)
    assert ckpt["position"] == {"experience": 1, "epoch": 0, "batch": 0, "step": 0}
    assert all(torch.equal(ckpt["strategy"]["model"][k], v) for k, v in after_task_0.items())

    # With the data fixed, the run goes on from there as if nothing had happened.
    expected = train(build("hypercl", "task", []), good)
    resumed = build("hypercl", "task", [Checkpoint(path, every=4)])
    assert restore(resumed, ckpt, good.train_stream) == 1
    got = train(resumed, good, 1)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_checkpoint_whose_optimizer_state_has_other_shapes_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "run.pt"
    strategy = build("hypercl", "task", [Checkpoint(path)])
    strategy.train(conflicting_stream(n_tasks=1).train_stream[0])
    ckpt = load_checkpoint(path)
    state = ckpt["strategy"]["optimizer"]["state"]
    key = next(k for k, v in state.items() if v["exp_avg"].dim() == 2)
    state[key]["exp_avg"] = state[key]["exp_avg"].T.contiguous()  # as 0.1 kept the last layer
    with pytest.raises(CheckpointError, match=r"optimizer state 'exp_avg' has shape .* another version of hypercl.*--force"):
        restore(build("hypercl", "task", []), ckpt, conflicting_stream(n_tasks=1).train_stream)


def test_bad_strategy_arguments_say_what_was_expected():
    with pytest.raises(TypeError, match="target must be an nn.Module.*got a str"):
        HyperCL(target="resnet32")
    with pytest.raises(ValueError, match=r"reg_targets must be 'auto' or one of \['factored', 'frozen', 'stored'\], got 'disk'"):
        HyperCL(target=MLP(16, (32,), 4), reg_targets="disk")


def test_one_train_call_over_many_experiences_saves_after_each(tmp_path):
    saved = []
    strategy = build("ewc", "task", [Checkpoint(tmp_path / "run.pt", on_save=saved.append)])
    strategy.train(conflicting_stream(n_tasks=3).train_stream)
    assert [p["experience"] for p in saved] == [1, 2, 3] and all(p["step"] == 0 for p in saved)
    ckpt = load_checkpoint(tmp_path / "run.pt")
    ewc = next(p["state"] for p in ckpt["strategy"]["plugins"] if p["class"] == "EWCPlugin")
    assert sorted(ewc["importances"]) == [0, 1, 2]  # the last experience's importances are in


def test_the_runner_refuses_a_checkpoint_it_did_not_write(mnist, tmp_path, capsys):
    strategy = build("hypercl", "task", [Checkpoint(tmp_path / "out" / "checkpoints" / "hypercl-seed0.pt")])
    strategy.train(conflicting_stream(n_tasks=3).train_stream[0])
    argv = ["split-mnist", "--strategies", "hypercl", "--data-root", str(mnist), "--out", str(tmp_path / "out")]
    assert main([*argv, "--resume"]) == 2
    assert "hypercl-seed0.pt was not written by hypercl-bench: move it out of" in capsys.readouterr().err


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    from hypercl.atomic import atomic_path

    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
