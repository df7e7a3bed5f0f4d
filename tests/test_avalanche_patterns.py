"""Conformance: HyperCL through the usage patterns of Avalanche's own examples and docs.

Each case is a pattern a user already runs with Avalanche's strategies (the getting-started
loop, periodic evaluation, loggers, plugins, benchmark generators, the scenarios without task
labels), run with HyperCL in place of ``Naive`` and nothing else changed, on real MNIST
split into five experiences of two digits. To keep the suite short the data is every tenth
MNIST image (about 1200 training and 200 test images per experience), loaded with the
transforms Avalanche's ``SplitMNIST`` uses. Every case checks numbers: accuracy well above
chance on what was trained, and the metrics a pattern produces present and in range.
"""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark, with_classes_timeline
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.utils import as_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import (
    accuracy_metrics,
    amca_metrics,
    bwt_metrics,
    class_accuracy_metrics,
    confusion_matrix_metrics,
    cpu_usage_metrics,
    forgetting_metrics,
    forward_transfer_metrics,
    loss_metrics,
    ram_usage_metrics,
    timing_metrics,
)
from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger, TextLogger
from avalanche.training.plugins import EarlyStoppingPlugin, EvaluationPlugin, LRSchedulerPlugin, ReplayPlugin
from torch.utils.data import TensorDataset
from torchvision import transforms
from torchvision.datasets import MNIST

from hypercl import MLP, HyperCL, HyperNetConfig

EVERY = 10  # keep every tenth MNIST image
PAIRS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
HNET = HyperNetConfig(hidden=(25,), chunk_size=3000, task_emb_dim=32, chunk_emb_dim=32)
SPLIT_MNIST_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])


def targeted(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    """A tensor dataset with the ``targets`` Avalanche's generators read."""
    data = TensorDataset(x, y)
    data.targets = y
    return data


@pytest.fixture(scope="module")
def mnist_small(mnist):
    """torchvision's MNIST with SplitMNIST's transforms, every tenth image: ``(train, test)``
    as torchvision datasets and as tensor datasets of the transformed images (the same
    samples; transformed once, so that the cases spend their time training)."""

    def load(train: bool):
        ds = MNIST(str(mnist), train=train, transform=SPLIT_MNIST_TRANSFORM)
        ds.data, ds.targets = ds.data[::EVERY], ds.targets[::EVERY]
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return ds, targeted(x, ds.targets.clone())

    (train, train_t), (test, test_t) = load(True), load(False)
    return {"torchvision": (train, test), "tensors": (train_t, test_t)}


def split_mnist(mnist_small, *, task_labels: bool = True, from_zero: bool = True):
    """Split MNIST as Avalanche's SplitMNIST builds it (nc_benchmark over MNIST), on the
    transformed tensors."""
    train, test = mnist_small["tensors"]
    return nc_benchmark(
        train, test, n_experiences=5, task_labels=task_labels, fixed_class_order=list(range(10)),
        class_ids_from_zero_in_each_exp=from_zero,
    )  # fmt: skip


def hypercl(n_out: int = 2, **kwargs) -> HyperCL:
    # a budget this short needs a stronger pull than the paper's beta = 0.01
    kwargs = {"train_mb_size": 64, "train_epochs": 3, "eval_mb_size": 500, "lr": 3e-3, "beta": 0.05, **kwargs}
    return HyperCL(target=MLP(784, (100, 100), n_out), hnet=HNET, **kwargs)


def exp_acc(res: dict, t: int, stream: str = "test_stream") -> float:
    (value,) = [v for k, v in res.items() if re.fullmatch(rf"Top1_Acc_Exp/eval_phase/{stream}/(Task\d+/)?Exp{t:03d}", k)]
    return value


def history(strategy, prefix: str) -> dict[str, list[float]]:
    """Every logged value of the metrics whose name starts with ``prefix``."""
    return {k: list(v[1]) for k, v in strategy.evaluator.get_all_metrics().items() if k.startswith(prefix)}


class Record(SupervisedPlugin):
    """Keeps ``fn(strategy)`` at ``hook``."""

    def __init__(self, hook: str, fn):
        super().__init__()
        self.values = []
        setattr(self, hook, lambda strategy, **kw: self.values.append(fn(strategy)))


# ------------------------------------------------------------------------------- the cases
def test_getting_started_loop_with_periodic_whole_stream_evaluation_and_forward_transfer(mnist_small):
    bm = split_mnist(mnist_small)
    strategy = hypercl(
        eval_every=1,
        evaluator=EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            forward_transfer_metrics(experience=True, stream=True),
            loggers=[],
        ),
    )
    results = []
    for experience in bm.train_stream:
        strategy.train(experience, eval_streams=[bm.test_stream])
        results.append(strategy.eval(bm.test_stream))
    final = results[-1]
    accs = [exp_acc(final, t) for t in range(5)]
    assert min(accs) > 0.9, accs
    # untrained experiences were evaluated (before the first step too) and scored in range
    before = history(strategy, "Top1_Acc_Exp/eval_phase/test_stream/Task004/Exp004")
    (values,) = before.values()
    assert len(values) >= 5 * 3 and all(0 <= v <= 1 for v in values)
    transfer = {k: v for k, v in final.items() if "ForwardTransfer" in k}
    assert len(transfer) == 4 + 1  # experiences 1..4, and the stream
    assert all(-1 <= v <= 1 and not math.isnan(v) for v in transfer.values()), transfer
    assert -0.02 < final["StreamBWT/eval_phase/test_stream"] <= 0.02


def test_avalanche_getting_started_as_is_class_incremental_without_task_labels(mnist_small):
    """examples/getting_started.py: class_incremental_benchmark (no task labels), a target with
    as many outputs as classes, whole-stream evaluation after each experience."""
    train, test = mnist_small["torchvision"]
    bm = class_incremental_benchmark(
        {"train": as_classification_dataset(train), "test": as_classification_dataset(test)}, num_experiences=5, seed=1234
    )
    assert not hasattr(bm.train_stream[0], "task_labels")
    strategy = hypercl(n_out=10, scenario="class", evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]))
    results = []
    for experience in bm.train_stream:
        strategy.train(experience)
        results.append(strategy.eval(bm.test_stream))
    stream = [r["Top1_Acc_Stream/eval_phase/test_stream"] for r in results]
    assert stream[0] < 0.3  # two of ten classes known
    assert stream[-1] > 0.75, stream  # chance: 0.1; the paper's HNET+ENT on full Split MNIST: 0.69
    assert all(0 <= exp_acc(r, t) <= 1 for r in results for t in range(5))


def test_domain_incremental_permuted_mnist_without_task_labels(mnist_small):
    train, test = mnist_small["tensors"]
    g = torch.Generator().manual_seed(0)
    perms = [torch.arange(784)] + [torch.randperm(784, generator=g) for _ in range(2)]

    def permuted(ds, perm):
        x, y = ds.tensors
        return _make_taskaware_tensor_classification_dataset(x.flatten(1)[:, perm], y)

    bm = with_classes_timeline(
        benchmark_from_datasets(train=[permuted(train, p) for p in perms], test=[permuted(test, p) for p in perms])
    )
    strategy = hypercl(n_out=10, scenario="domain", evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for experience in bm.train_stream:
        strategy.train(experience)
    res = strategy.eval(bm.test_stream)
    accs = [exp_acc(res, t) for t in range(3)]
    assert min(accs) > 0.8, accs  # ten-way, chance 0.1


def test_train_on_the_whole_stream_at_once(mnist_small):
    bm = split_mnist(mnist_small)
    strategy = hypercl(evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    strategy.train(bm.train_stream)
    res = strategy.eval(bm.test_stream)
    accs = [exp_acc(res, t) for t in range(5)]
    assert min(accs) > 0.9, accs
    assert strategy.model.tasks == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("mode, every, per_exp", [("epoch", 1, 3), ("iteration", 10, 5)])
def test_periodic_evaluation(mnist_small, mode, every, per_exp):
    bm = split_mnist(mnist_small)
    strategy = hypercl(
        eval_every=every, peval_mode=mode, evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    )
    for experience in bm.train_stream[:2]:
        strategy.train(experience, eval_streams=[bm.test_stream[:2]])
    (values,) = history(strategy, "Top1_Acc_Stream/eval_phase/test_stream").values()
    # epoch: before training and after each of 2 epochs; iteration: before, every 10 of ~38 steps
    assert len(values) >= 2 * per_exp, values
    assert all(0 <= v <= 1 for v in values) and values[-1] > 0.9


def test_loggers_with_minibatch_epoch_experience_and_stream_metrics(mnist_small, tmp_path, capsys):
    bm = split_mnist(mnist_small)
    text = tmp_path / "log.txt"
    with open(text, "w") as f:
        strategy = hypercl(
            evaluator=EvaluationPlugin(
                accuracy_metrics(minibatch=True, epoch=True, epoch_running=True, experience=True, stream=True),
                loss_metrics(minibatch=True, epoch=True, epoch_running=True, experience=True, stream=True),
                loggers=[
                    InteractiveLogger(),
                    TextLogger(f),
                    CSVLogger(str(tmp_path / "csv")),
                    TensorboardLogger(str(tmp_path / "tb")),
                ],
            )
        )
        for i, experience in enumerate(bm.train_stream[:2]):
            strategy.train(experience)
            strategy.eval(bm.test_stream[: i + 1])
        strategy.evaluator.loggers[3].writer.close()
    printed = capsys.readouterr().out
    logged = text.read_text()
    for out in (printed, logged):
        accs = [float(v) for v in re.findall(r"Top1_Acc_Stream/eval_phase/test_stream/Task\d+ = ([0-9.]+)", out)]
        assert len(accs) >= 2 and all(0.9 < a <= 1 for a in accs), accs
        assert re.search(r"Top1_Acc_MB/train_phase/train_stream/Task000 = ", out)
    with open(tmp_path / "csv" / "eval_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 2 and all(0.9 < float(r["eval_accuracy"]) <= 1 for r in rows)
    with open(tmp_path / "csv" / "training_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and all(0.5 < float(r["training_accuracy"]) <= 1 for r in rows)  # one per epoch

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "Top1_Acc_Epoch/train_phase/train_stream/Task001" in tags
    values = [e.value for tag in ("Task000/Exp000", "Task001/Exp001") for e in acc.Scalars(f"Top1_Acc_Exp/eval_phase/test_stream/{tag}")]
    assert len(values) >= 2 and all(0.9 < v <= 1 for v in values)


def test_replay_plugin(mnist_small):
    bm = split_mnist(mnist_small)
    replay = ReplayPlugin(mem_size=200)
    strategy = hypercl(plugins=[replay], evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for experience in bm.train_stream:
        strategy.train(experience)
    res = strategy.eval(bm.test_stream)
    assert min(exp_acc(res, t) for t in range(5)) > 0.9
    assert len(replay.storage_policy.buffer) == 200
    assert sorted(replay.storage_policy.buffer_groups) == [0, 1, 2, 3, 4]


def test_lr_scheduler_plugin_with_a_user_built_optimizer(mnist_small):
    bm = split_mnist(mnist_small)
    target = MLP(784, (100, 100), 2)
    optimizer = torch.optim.Adam(target.parameters(), lr=4e-3)  # Avalanche swaps in the model's parameters
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    lrs = Record("before_training_epoch", lambda s: s.optimizer.param_groups[0]["lr"])
    strategy = HyperCL(
        target=target, hnet=HNET, optimizer=optimizer, train_mb_size=64, train_epochs=3,
        plugins=[LRSchedulerPlugin(scheduler), lrs],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )  # fmt: skip
    for experience in bm.train_stream[:2]:
        strategy.train(experience)
    assert lrs.values == pytest.approx([4e-3, 2e-3, 1e-3] * 2)
    res = strategy.eval(bm.test_stream[:2])
    assert min(exp_acc(res, t) for t in range(2)) > 0.9


def test_early_stopping_plugin_stops_before_the_epoch_budget(mnist_small):
    bm = split_mnist(mnist_small)
    epochs = Record("after_training_exp", lambda s: s.clock.train_exp_epochs)
    strategy = hypercl(
        train_epochs=30,
        eval_every=1,
        plugins=[EarlyStoppingPlugin(patience=1, val_stream_name="test_stream"), epochs],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
    )
    for experience, test in zip(bm.train_stream[:2], bm.test_stream[:2]):
        strategy.train(experience, eval_streams=[test])
    assert all(1 <= e < 30 for e in epochs.values), epochs.values
    res = strategy.eval(bm.test_stream[:2])
    assert min(exp_acc(res, t) for t in range(2)) > 0.9


def test_original_class_ids_and_a_target_with_an_output_per_class(mnist_small):
    bm = split_mnist(mnist_small, from_zero=False)
    strategy = hypercl(n_out=10, evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for experience in bm.train_stream:
        strategy.train(experience)
    res = strategy.eval(bm.test_stream)
    assert min(exp_acc(res, t) for t in range(5)) > 0.9
    x = next(iter(torch.utils.data.DataLoader(bm.test_stream[3].dataset, batch_size=8)))[0]
    with torch.no_grad():
        out = strategy.model.eval()(x, 3)
    assert (out[:, [6, 7]] > -1000).all() and (out[:, [0, 1, 2, 3, 4, 5, 8, 9]] == -1000).all()


def test_nc_benchmark_from_tensors_with_a_random_class_order(mnist_small):
    train, test = mnist_small["tensors"]
    flat = [targeted(ds.tensors[0].flatten(1), ds.targets) for ds in (train, test)]
    bm = nc_benchmark(*flat, n_experiences=5, task_labels=True, seed=3, class_ids_from_zero_in_each_exp=True)
    assert bm.train_stream[0].classes_in_this_experience == [0, 1]  # renumbered from 0 in each
    strategy = hypercl(evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for experience in bm.train_stream:
        strategy.train(experience)
    res = strategy.eval(bm.test_stream)
    assert min(exp_acc(res, t) for t in range(5)) > 0.9


def test_the_eval_plugin_examples_metrics(mnist_small):
    """examples/eval_plugin.py's metrics (those that need no GPU, network or image logger)."""
    bm = split_mnist(mnist_small, from_zero=False)
    strategy = hypercl(
        n_out=10,
        eval_every=1,  # forward transfer needs periodic evaluation
        evaluator=EvaluationPlugin(
            accuracy_metrics(minibatch=True, epoch=True, experience=True, stream=True),
            class_accuracy_metrics(epoch=True, stream=True, classes=list(range(10))),
            amca_metrics(),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            forward_transfer_metrics(experience=True, stream=True),
            cpu_usage_metrics(epoch=True, experience=True, stream=True),
            timing_metrics(epoch=True, experience=True, stream=True),
            ram_usage_metrics(every=0.5, epoch=True, experience=True, stream=True),
            confusion_matrix_metrics(num_classes=10, save_image=False, stream=True),
            loggers=[],
        ),
    )
    for experience in bm.train_stream[:3]:
        strategy.train(experience, eval_streams=[bm.test_stream])
        res = strategy.eval(bm.test_stream)
    assert min(exp_acc(res, t) for t in range(3)) > 0.9
    per_class = {k: v for k, v in res.items() if k.startswith("Top1_ClassAcc_Stream")}
    assert len(per_class) == 10 and all(0 <= v <= 1 for v in per_class.values())
    amca = [v for k, v in res.items() if k.startswith("Top1_AMCA_Stream")]
    assert amca and all(0 <= v <= 1 for v in amca)
    matrix = res["ConfusionMatrix_Stream/eval_phase/test_stream"]
    assert matrix.shape == (10, 10) and matrix.sum() == sum(len(e.dataset) for e in bm.test_stream)
    for name in ("Time_Stream", "MaxRAMUsage_Stream", "CPUUsage_Stream"):
        values = [v for k, v in res.items() if k.startswith(f"{name}/eval_phase/test_stream")]
        assert values and all(v >= 0 for v in values), name
    assert any(v > 0 for k, v in res.items() if k.startswith("Time_Stream"))


def test_online_stream_with_replay(mnist_small):
    """examples/online_replay.py: each experience split into mini-experiences of 32 samples."""
    bm = split_mnist(mnist_small)
    strategy = hypercl(
        train_mb_size=32, train_epochs=1, lr=2e-3,
        plugins=[ReplayPlugin(mem_size=100, batch_size=16)],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )  # fmt: skip
    for experience in bm.train_stream[:2]:
        strategy.train(split_online_stream([experience], experience_size=32))
    res = strategy.eval(bm.test_stream[:2])
    assert min(exp_acc(res, t) for t in range(2)) > 0.9
    assert strategy.model.tasks == [0, 1]


def test_dataloader_workers(mnist_small):
    """examples/multihead.py trains and evaluates with ``num_workers=4``."""
    bm = split_mnist(mnist_small)
    strategy = hypercl(evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    for experience in bm.train_stream[:2]:
        strategy.train(experience, num_workers=2)
    res = strategy.eval(bm.test_stream[:2], num_workers=2)
    assert min(exp_acc(res, t) for t in range(2)) > 0.9
