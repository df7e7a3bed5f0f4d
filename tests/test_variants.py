"""Variants of a preset compared on the validation split (``benchmarks/variants.py``), the
validation split itself, and the CIFAR ``cpu`` preset through the command line."""

import json

import numpy as np
import pytest
import torch
from helpers import write_cifar

from hypercl.bench.cli import main as bench
from hypercl.bench.datasets import build
from hypercl.bench.variants import main, parse_variant
from hypercl.cifar import normalize


def _keys(images: torch.Tensor) -> list[bytes]:
    """Each image as bytes, rounded so that two standardisations of one image agree."""
    return [bytes(row) for row in (images.flatten(1) * 1000).round().to(torch.int32).numpy()]


def test_the_validation_split_holds_training_images_of_its_task_only(tmp_path):
    written = write_cifar(tmp_path, "cifar100", per_class=20, test_per_class=20)
    bm = build("split-cifar100", tmp_path, seed=0, validation=0.1, n_tasks=2)
    test_images = set(_keys(normalize("cifar100", torch.as_tensor(written["test"][0]).view(-1, 3, 32, 32))))
    data, labels = written["train"]
    for t in range(2):
        mine = np.flatnonzero((labels >= 10 * t) & (labels < 10 * (t + 1)))
        task_images = _keys(normalize("cifar100", torch.as_tensor(data[mine]).view(-1, 3, 32, 32)))
        val = _keys(torch.stack([x for x, *_ in bm.test_stream[t].dataset]))
        train = _keys(torch.stack([x for x, *_ in bm.train_stream[t].dataset]))
        assert len(val) == 20 and len(train) == 180  # 10 % of the task's 200 training images
        assert sorted(val + train) == sorted(task_images)  # the task's training images, each once
        assert not set(val) & test_images and not set(val) & set(train)


def test_variants_train_on_validation_and_a_second_command_adds_only_new_ones(tmp_path, capsys):
    write_cifar(tmp_path, "cifar100", per_class=8)
    out = tmp_path / "v"
    argv = ["split-cifar100", "--tasks", "2", "--steps", "3", "--data-root", str(tmp_path), "--out", str(out),
            "--variant", "base:", "--variant", "prev: emb_init=previous emb_lr=0.01 hidden=[20,20]",
            "--variant", "ref: strategy=naive lr=0.002"]  # fmt: skip
    assert main(argv) == 0
    prev = json.loads((out / "runs" / "prev-seed0.json").read_text())
    s = prev["config"]["preset_settings"]
    assert (s["emb_init"], s["emb_lr"], s["hnet"]["hidden"]) == ("previous", 0.01, [20, 20])
    assert prev["evaluated_on"].startswith("validation") and len(prev["acc"]) == 2 and prev["strategy"] == "hypercl"
    ref = json.loads((out / "runs" / "ref-seed0.json").read_text())
    assert ref["strategy"] == "naive" and ref["config"]["preset_settings"]["lr"] == 0.002
    rows = [line for line in (out / "variants.md").read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| base", "| prev", "| ref"]
    just = float(rows[2].split(" | ")[4].split()[0])
    assert just == pytest.approx(prev["acc"][0][0] * 100, abs=0.05)
    capsys.readouterr()
    assert main([*argv, "--variant", "fast: lr=0.01"]) == 0
    assert "1 runs to train" in capsys.readouterr().out  # the three recorded ones are not trained again
    with pytest.raises(SystemExit):
        main([*argv[:-1], "ref: strategy=naive lr=0.1"])
    assert "recorded in --out with other settings: ref (seed 0)" in capsys.readouterr().err
    assert json.loads((out / "runs" / "ref-seed0.json").read_text()) == ref  # untouched


@pytest.mark.parametrize(
    ("text", "message"),
    [("no colon", "expected 'NAME: key=value"), ("x: lr", "'lr' is not key=value"),
     ("x: strategy=sgd", "unknown strategy 'sgd'")],
)  # fmt: skip
def test_a_malformed_variant_is_one_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_variant(text, "hypercl")


@pytest.mark.parametrize("flag", ["--tasks", "--seeds", "--checkpoint-every"])
def test_a_count_below_one_is_one_clear_message(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["split-cifar100", "--out", str(tmp_path / "v"), "--variant", "base:", flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_an_unknown_option_is_named(tmp_path, capsys):
    write_cifar(tmp_path, "cifar100", per_class=2)
    with pytest.raises(SystemExit):
        main(["split-cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "v"), "--variant", "x: lrr=1"])
    err = capsys.readouterr().err
    assert "--variant x: " in err and "'lrr'" in err and "Preset's and HyperNetConfig's fields" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [("lr=1e-3,beta=0.05", "lr='1e-3,beta=0.05' is not a valid value: expected float. Separate settings with spaces"),
     ("reg_tasks=two", "reg_tasks='two' is not a valid value: expected int | None."),
     ("chunk_size=big", "chunk_size='big' is not a valid value: expected int | None.")],
)  # fmt: skip
def test_a_value_of_the_wrong_kind_is_one_clear_message_before_anything_trains(option, message, tmp_path, capsys):
    write_cifar(tmp_path, "cifar100", per_class=2)
    with pytest.raises(SystemExit):
        main(["split-cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "v"), "--variant", f"x: {option}"])
    err = capsys.readouterr().err
    assert f"--variant x: {message}" in err
    assert not (tmp_path / "v").exists()  # nothing started


def test_split_cifar100_cpu_preset_runs_two_tasks_through_the_command_line(tmp_path):
    write_cifar(tmp_path, "cifar100", per_class=4)
    out = tmp_path / "res"
    argv = ["split-cifar100", "--strategies", "hypercl,naive", "--steps", "2", "--tasks", "2",
            "--data-root", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert bench(argv) == 0
    record = json.loads((out / "runs" / "hypercl-seed0.json").read_text())
    assert record["preset"] == "cpu" and record["config"]["preset_settings"]["target"] == "zenkenet"
    assert len(record["acc"]) == 2 and all(0 <= a <= 1 for a in record["acc"][1])
    assert "| naive |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("benchmark", ["split-cifar100", "split-cifar10-100"])
@pytest.mark.parametrize("name", ["paper", "paper-zenke", "cpu"])
def test_replay_memory_is_the_hypernetworks_bytes_in_cifar_images(benchmark, name):
    from hypercl.bench.datasets import info_of
    from hypercl.bench.presets import REPLAY_IMAGE_BYTES, preset
    from hypercl.bench.strategies import make_target
    from hypercl.model import HyperCLModel

    p, info = preset(benchmark, name), info_of(benchmark, "task")
    model = HyperCLModel(make_target(info, p, info.classes_per_task), hnet=p.hnet)
    floats = sum(t.numel() for t in model.hnet.parameters()) + info.n_tasks * p.hnet.task_emb_dim
    assert p.replay_mem == floats * 4 // REPLAY_IMAGE_BYTES  # as many whole images as fit


def test_generate_and_freeze_shared_pick_what_the_hypernetwork_makes():
    from dataclasses import replace

    from hypercl.bench.datasets import info_of
    from hypercl.bench.presets import preset
    from hypercl.bench.strategies import make_strategy, settings_of
    from hypercl.bench.variants import settings

    info = info_of("split-cifar100", "task")
    base = preset("split-cifar100", "cpu")
    p = settings(base, parse_variant("convs: generate=['conv*','head.*'] freeze_shared=true", "hypercl"))
    assert (p.generate, p.freeze_shared) == (("conv*", "head.*"), True)
    model = make_strategy("hypercl", info, p).model
    convs_and_head = ["conv1", "conv2", "conv3", "conv4", "head"]
    assert model.layout.names == tuple(f"{m}.{w}" for m in convs_and_head for w in ("weight", "bias"))
    target = model.target
    assert model.layout.n_weights == sum(p.numel() for m in convs_and_head for p in getattr(target, m).parameters())
    assert not any(p.requires_grad for p in target.fc.parameters())  # shared and frozen at its init
    trained = make_strategy("hypercl", info, replace(p, freeze_shared=False)).model.target
    assert all(p.requires_grad for p in trained.fc.parameters())
    # Runs recorded before these options existed ran with every weight generated: still the same settings.
    old = {k: v for k, v in base.to_dict().items() if k not in ("generate", "freeze_shared", "freeze_shared_after")}
    assert settings_of("hypercl", old) == settings_of("hypercl", base.to_dict())
    assert settings_of("hypercl", p.to_dict()) != settings_of("hypercl", base.to_dict())


def test_checkpoint_every_reaches_each_run(tmp_path, monkeypatch):
    import hypercl.bench.variants as variants

    write_cifar(tmp_path, "cifar100", per_class=2)
    seen = {}
    monkeypatch.setattr(variants, "run_grid", lambda execute, jobs, *a, **k: seen.update(jobs))
    argv = ["split-cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "v"), "--seeds", "2",
            "--variant", "base:", "--variant", "ref: strategy=naive", "--checkpoint-every", "50"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(seen) == [("base", 0), ("base", 1), ("ref", 0), ("ref", 1)]
    assert {(j.every, j.resume, j.checkpoint.endswith(f"{k[0]}-seed{k[1]}.pt")) for k, j in seen.items()} == {(50, True, True)}
