"""CIFAR loaders on generated pickles and on the real CIFAR-100, the Split CIFAR benchmarks,
and the runner on a two-task CIFAR-shaped stream."""

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import write_cifar

from hypercl import cifar
from hypercl.bench.cli import main
from hypercl.cifar import class_names, cifar_root, load_cifar, normalize, split_cifar10_100, split_cifar100
from hypercl.data import data_root


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_loader_round_trips_the_pickle_layout(tmp_path, name):
    written = write_cifar(tmp_path, name)
    for split in ("train", "test"):
        data, labels = written[split]
        x, y = load_cifar(name, tmp_path, train=split == "train")
        assert x.dtype == torch.uint8 and x.shape == (len(labels), 3, 32, 32)
        assert torch.equal(y, torch.as_tensor(labels, dtype=torch.long))
        # row-major planes: the first 1024 bytes are red, then green, then blue
        assert torch.equal(x[:, 0].flatten(1), torch.as_tensor(data[:, :1024]))
        assert torch.equal(x[:, 2].flatten(1), torch.as_tensor(data[:, 2048:]))
    assert class_names(name, tmp_path)[3] == "class3"


def test_normalize_standardises_with_the_data_sets_statistics():
    fmt = cifar.CIFAR["cifar100"]
    mean = torch.tensor(fmt.mean).view(1, 3, 1, 1) * 255
    images = mean.round().to(torch.uint8).expand(2, 3, 4, 4)
    assert normalize("cifar100", images).abs().max() < 0.01  # the mean maps to ~0


def test_missing_files_are_named_and_nothing_is_downloaded_into_a_given_root(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded into the user's own data root")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", no_download)
    with pytest.raises(FileNotFoundError, match="missing data_batch_3, test_batch"):
        load_cifar("cifar10", tmp_path)


def test_cache_is_used_when_present_and_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERCL_DATA_ROOT", raising=False)
    monkeypatch.setattr(cifar, "CACHE_ROOT", tmp_path)
    calls = []

    def offline(root, train, download):
        calls.append(root)
        raise RuntimeError("Error downloading cifar-100-python.tar.gz")

    monkeypatch.setattr("torchvision.datasets.CIFAR100", offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded .*Pass a data root"):
        cifar_root("cifar100")
    assert calls == [tmp_path]
    write_cifar(tmp_path, "cifar100")
    assert cifar_root("cifar100") == tmp_path and len(calls) == 1  # found: no second download


def test_a_truncated_file_is_one_clear_error(tmp_path):
    write_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable CIFAR pickle .*truncated"):
        load_cifar("cifar100", tmp_path)


def test_another_data_sets_files_are_recognised(tmp_path):
    written = write_cifar(tmp_path, "cifar100")
    # CIFAR-100 files under CIFAR-10's names: other keys
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (folder / f).write_bytes((tmp_path / "cifar-100-python" / "train").read_bytes())
    with pytest.raises(ValueError, match="has keys .*fine_labels.* 'labels': is the data root pointing at another"):
        load_cifar("cifar10", tmp_path)
    # CIFAR-100 labels where CIFAR-10's 10 classes were expected
    data, labels = written["train"]
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
    with pytest.raises(ValueError, match="labels span 0..99 but cifar10 has 10 classes"):
        load_cifar("cifar10", tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": data[:, :1000], b"labels": [0] * len(data)}, f)
    with pytest.raises(ValueError, match=r"expected 'data' uint8 of shape \(N, 3072\)"):
        load_cifar("cifar10", tmp_path)


def test_split_cifar10_100_is_cifar10_then_cifar100_classes_in_tasks_of_ten(tmp_path):
    c10 = write_cifar(tmp_path, "cifar10", per_class=3)
    c100 = write_cifar(tmp_path, "cifar100", per_class=2, seed=1)
    bm = split_cifar10_100(tmp_path)
    assert len(bm.train_stream) == 6
    assert [e.task_label for e in bm.train_stream] == list(range(6))
    for t, exp in enumerate(bm.train_stream):
        assert sorted(exp.classes_in_this_experience) == list(range(10))  # ids from zero
        x, y, task = (torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v) for v in zip(*exp.dataset))
        data, labels = c10["train"] if t == 0 else c100["train"]
        want = np.flatnonzero((labels >= 10 * (t - 1)) & (labels < 10 * t)) if t else np.arange(len(labels))
        assert len(x) == len(want) and (task == t).all()
        name = "cifar10" if t == 0 else "cifar100"
        images = normalize(name, torch.as_tensor(data[want]).view(-1, 3, 32, 32))
        local = torch.as_tensor(labels[want]) - 10 * max(t - 1, 0)
        # the same images with the same local labels (order aside)
        order = np.lexsort((images.flatten(1)[:, :4].T.numpy()[::-1]))
        got = np.lexsort((x.flatten(1)[:, :4].T.numpy()[::-1]))
        assert torch.allclose(x[got], images[order]) and torch.equal(y[got], local[order])


def test_split_cifar100_wants_an_even_split(tmp_path):
    with pytest.raises(ValueError, match="divide the 100 classes evenly"):
        split_cifar100(tmp_path, n_experiences=7)


def test_real_cifar100_is_complete_and_standardised():
    root = data_root()
    if root is None or not (root / "cifar-100-python" / "train").is_file():
        pytest.skip("no CIFAR-100 under $HYPERCL_DATA_ROOT")
    x, y = load_cifar("cifar100", root)
    assert x.shape == (50000, 3, 32, 32) and torch.equal(y.bincount(), torch.full((100,), 500))
    # moments over the whole training set, accumulated in slices to keep memory small
    moments = torch.zeros(2, 3, dtype=torch.float64)
    for part in x.split(10000):
        z = normalize("cifar100", part).double()
        moments += torch.stack([z.sum((0, 2, 3)), z.square().sum((0, 2, 3))])
    mean, square = moments / (x.shape[0] * 32 * 32)
    assert mean.abs().max() < 1e-3 and ((square - mean**2).sqrt() - 1).abs().max() < 1e-3
    _, y_test = load_cifar("cifar100", root, train=False)
    assert torch.equal(y_test.bincount(), torch.full((100,), 100))


def test_runner_trains_resnet32_on_a_two_task_split_cifar10_100(tmp_path, capsys):
    write_cifar(tmp_path, "cifar10", per_class=4)
    write_cifar(tmp_path, "cifar100", per_class=4, seed=1)
    out = tmp_path / "res"
    argv = ["split-cifar10-100", "--preset", "paper", "--strategies", "hypercl,naive", "--steps", "2",
            "--tasks", "2", "--data-root", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "runs" / "hypercl-seed0.json").read_text())
    cfg = record["config"]
    assert cfg["preset_settings"]["target"] == "resnet32" and cfg["preset_settings"]["augment"]
    assert cfg["train_steps"] == 4 and cfg["steps_per_task"] == 2 and cfg["epochs_per_task"] is None
    assert 0.93 < cfg["compression_ratio"] < 0.99  # the paper's compressive regime for ResNet-32
    assert len(record["acc"]) == 2 and all(0 <= a <= 1 for a in record["acc"][1])
    naive = json.loads((out / "runs" / "naive-seed0.json").read_text())
    assert naive["config"]["preset_settings"]["target"] == "resnet32"
    assert "| hypercl |" in (out / "summary.md").read_text()


def test_cifar_benchmark_without_its_data_is_one_clear_message(tmp_path, capsys):
    code = main(["split-cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "cifar-100-python is incomplete" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_runner_with_a_truncated_cifar_file_stops_with_one_message(tmp_path, capsys):
    write_cifar(tmp_path, "cifar100")
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    code = main(["split-cifar100", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "train is not a readable CIFAR pickle" in err and "truncated" in err
    assert not (tmp_path / "out").exists()
