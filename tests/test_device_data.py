"""The device-resident data path: the same batches as Avalanche's loaders, every sample once per
epoch, bit-identical runs, and a training step with no host round trip."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.training import Cumulative, Naive, Replay
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget
from hypercl.bench.strategies import MultiHead
from hypercl.data import DataCache, DeviceData, DeviceLoader, Standardize, task_groups
from hypercl.data.loaders import device_loader
from hypercl.guards import StopOnNonFiniteLoss

from helpers import conflicting_stream


def uint8_stream(n_tasks: int = 3, n: int = 96, seed: int = 0, shuffle_tasks: bool = False):
    """Tasks of uint8 'images' (1, 4, 4) standardised on the fly, two classes each."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8) for _ in range(n_tasks)]
    ys = [torch.arange(n) % 2 for _ in range(n_tasks)]
    tr = Standardize((0.5,), (0.25,))
    return tensors_benchmark(
        train_tensors=list(zip(xs, ys)), test_tensors=list(zip(xs, ys)), task_labels=list(range(n_tasks)),
        train_transform=tr, eval_transform=tr,
    )  # fmt: skip


class Recorder:
    """Avalanche plugin: every training batch's inputs, targets and task labels."""

    def __init__(self):
        self.batches = []

    def __getattr__(self, name):  # every other hook does nothing
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)

    def before_forward(self, strategy, **kwargs):
        self.batches.append([t.detach().clone() for t in strategy.mbatch])


def baseline(cls, plugins, **kwargs):
    model = MultiHead(MLP(16, (12,), 1), 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    return cls(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), train_mb_size=10, eval_mb_size=50,
               evaluator=EvaluationPlugin(), plugins=plugins, **kwargs)  # fmt: skip


def hypercl(plugins, **kwargs):
    hnet = HyperNetConfig(hidden=(8,), chunk_size=60, task_emb_dim=4, chunk_emb_dim=4)
    return HyperCL(target=MLP(16, (12,), 4), hnet=hnet, beta=0.05, reg_tasks=1, train_mb_size=10,
                   eval_mb_size=50, evaluator=EvaluationPlugin(), plugins=plugins, **kwargs)  # fmt: skip


MAKERS = {
    "hypercl": hypercl,
    "naive": lambda plugins: baseline(Naive, plugins),
    "replay": lambda plugins: baseline(Replay, plugins, mem_size=40),
    "joint": lambda plugins: baseline(Cumulative, plugins),
}


def run(name: str, device_data: bool, stream, *, steps: int = 7, shuffle: bool = True):
    """Train ``name`` on every experience; the weights, the batches, the outputs on the test
    stream and the random state after."""
    RNGManager.set_random_seeds(0)
    rec = Recorder()
    plugins = [*([DeviceData()] if device_data else []), StepBudget(steps), rec]
    strategy = MAKERS[name](plugins)
    outputs = []
    for exp in stream.train_stream:
        strategy.train(exp, shuffle=shuffle)
    strategy.model.eval()
    for exp in stream.test_stream:
        x, _, t = _all(exp.dataset.eval())
        outputs.append(strategy.model(x, t).detach())
    state = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    return state, rec.batches, outputs, torch.get_rng_state()


def _all(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([i[0] for i in items]), torch.tensor([i[1] for i in items]), torch.tensor([i[2] for i in items])


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_run_through_device_data_is_the_run_through_avalanches_loader_bit_for_bit(name, shuffle):
    stream = conflicting_stream(n_tasks=3, n=64)
    ours = run(name, True, stream, shuffle=shuffle)
    theirs = run(name, False, stream, shuffle=shuffle)
    assert ours[0].keys() == theirs[0].keys()
    assert all(torch.equal(ours[0][k], theirs[0][k]) for k in ours[0])  # weights
    assert len(ours[1]) == len(theirs[1]) == 21 and all(
        all(torch.equal(a, b) for a, b in zip(p, q)) for p, q in zip(ours[1], theirs[1])
    )  # every batch: inputs, targets, task labels
    assert all(torch.equal(a, b) for a, b in zip(ours[2], theirs[2]))  # outputs
    assert torch.equal(ours[3], theirs[3])  # and the random state after it all
    again = run(name, True, stream, shuffle=shuffle)
    assert all(torch.equal(again[0][k], ours[0][k]) for k in ours[0])  # same seed, same run


def test_every_sample_once_per_epoch_with_its_labels():
    stream = conflicting_stream(n_tasks=2, n=53)
    data = stream.train_stream[1].dataset.train()
    from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader

    loader = device_loader(TaskBalancedDataLoader(data, batch_size=8, shuffle=True), DataCache("cpu"))
    assert isinstance(loader, DeviceLoader) and len(loader) == 7  # ceil(53 / 8), as Avalanche's
    x_all, y_all, _ = _all(data)
    for _ in range(2):  # two epochs, two orders
        seen = []
        for x, y, t in loader:
            for xi, yi, ti in zip(x, y, t):
                row = int(torch.nonzero((x_all == xi).all(1))[0])
                assert int(yi) == int(y_all[row]) and int(ti) == 1
                seen.append(row)
        assert sorted(seen) == list(range(53))  # each sample exactly once, no replacement


def test_uint8_data_stay_uint8_on_the_device_and_are_standardised_per_batch():
    stream = uint8_stream()
    cache = DataCache("cpu")
    got = cache.tensors(stream.train_stream[0].dataset.train())
    assert got.x.dtype == torch.uint8 and got.transform == (Standardize((0.5,), (0.25,)),)
    x, _, _ = _all(stream.train_stream[0].dataset.train())
    assert torch.equal(got.inputs(torch.arange(len(x))), x)  # bit for bit the per-sample transform
    # The experiences are rows of one leaf each: their raw rows are kept once per leaf.
    cache.tensors(stream.train_stream[0].dataset.eval())
    assert len(cache._raw) == 1


def test_deterministic_transforms_are_applied_once_per_sample_of_the_underlying_dataset():
    calls = Counter()

    class Shift:  # an unknown, deterministic transform: tested, then cached
        def __call__(self, x):
            calls[float(x.sum())] += 1
            return x + 1

    x = torch.randn(60, 16)
    y = torch.arange(60) % 4
    bm = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[(x, y)], task_labels=[0],
                           train_transform=Shift(), eval_transform=Shift())  # fmt: skip
    cache = DataCache("cpu")
    data = bm.train_stream[0].dataset.train()
    first = cache.tensors(data)
    # Each sample once for the cache, plus the randomness test (2), the first sample's shape (1)
    # and the comparison of a few samples with the dataset's own (4).
    assert sum(calls.values()) <= 60 + 2 + 1 + 4
    assert torch.equal(first.inputs(torch.arange(60)), x + 1)
    for part in (data.subset(range(30)), data.subset(range(20, 60)), data):
        before = sum(calls.values())
        again = cache.tensors(part)
        assert sum(calls.values()) - before <= 2 + 4  # the tests only: no sample recomputed
        assert torch.equal(again.inputs(torch.arange(len(part))), _all(part)[0])


def test_the_cache_keeps_at_most_its_bytes_and_reloads_what_it_dropped():
    stream = uint8_stream(n_tasks=4, n=100)  # each experience's leaf: 100 x 16 uint8 = 1600 bytes
    cache = DataCache("cpu", max_bytes=2 * 1600)
    for exp in stream.train_stream:
        cache.tensors(exp.dataset.train())
    assert len(cache._raw) == 2 and sum(v[1].nbytes for v in cache._raw.values()) <= 2 * 1600
    first = stream.train_stream[0].dataset.train()
    again = cache.tensors(first)  # dropped, loaded again, the same samples
    assert torch.equal(again.inputs(torch.arange(100)), _all(first)[0])


def test_a_random_transform_keeps_avalanches_loader_and_says_so():
    class Jitter:
        def __call__(self, x):
            return x + torch.rand(())

    x, y = torch.randn(40, 16), torch.arange(40) % 4
    bm = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[(x, y)], task_labels=[0], train_transform=Jitter())
    assert "random" in DataCache("cpu").tensors(bm.train_stream[0].dataset.train())
    strategy = baseline(Naive, [DeviceData(), StepBudget(3)])
    with pytest.warns(UserWarning, match=r"DeviceData: keeping Avalanche's data loader because .*Jitter.* is random"):
        strategy.train(bm.train_stream[0])
    assert strategy.clock.train_iterations == 3


def test_mixed_task_batches_carry_their_groups_and_the_model_uses_them():
    stream = conflicting_stream(n_tasks=3, n=40)
    strategy = hypercl([StepBudget(2)])
    for exp in stream.train_stream:
        strategy.train(exp)
    from avalanche.benchmarks.utils import concat_datasets
    from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader

    data = concat_datasets([e.dataset.eval() for e in stream.test_stream])
    loader = device_loader(SingleDatasetDataLoader(data, batch_size=50, shuffle=True), DataCache("cpu"))
    strategy.model.eval()
    for x, y, t in loader:
        groups = task_groups(t)
        assert groups is not None and sum(groups.sizes) == len(t)
        assert list(groups.tasks) == sorted(set(t.tolist()))
        with torch.no_grad():
            fast = strategy.model(x, t)
            slow = strategy.model(x, t.clone())  # no groups: read off the labels
        assert torch.equal(fast, slow)


class SyncCounter(TorchDispatchMode):
    """Counts the ops that copy a tensor's value to the host (``.item()``, ``float(t)``...)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountSyncs:
    """Avalanche plugin: count host syncs from the end of step ``start`` to the end of step
    ``stop`` of the experience (the data loader's next batch and every hook included)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop, self.mode, self.counts = start, stop, None, []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)

    def after_training_iteration(self, strategy, **kwargs):
        i = strategy.clock.train_exp_iterations
        if self.mode is not None and i == self.stop:
            self.mode.__exit__(None, None, None)
            self.counts.append(self.mode.count)
            self.mode = None
        if i == self.start:
            self.mode = SyncCounter()
            self.mode.__enter__()


@pytest.mark.parametrize("lookahead", [True, False])
def test_a_training_step_never_waits_for_the_device(lookahead):
    from hypercl.bench.run import ProgressBar
    from hypercl.checkpoint import Checkpoint
    from hypercl.speedups import FlushDenormals

    stream = uint8_stream(n_tasks=3, n=200)
    counter = CountSyncs(start=3, stop=9)
    plugins = [DeviceData(), StepBudget(12), ProgressBar("test", 12), Checkpoint(None), counter]
    hnet = HyperNetConfig(hidden=(8,), chunk_size=60, task_emb_dim=4, chunk_emb_dim=4)
    strategy = HyperCL(target=nn.Sequential(nn.Flatten(), MLP(16, (12,), 2)), hnet=hnet, beta=0.05, reg_tasks=1,
                       lookahead=lookahead, train_mb_size=10, evaluator=EvaluationPlugin(), plugins=plugins)  # fmt: skip
    assert any(isinstance(p, StopOnNonFiniteLoss) for p in strategy.plugins)
    assert any(isinstance(p, FlushDenormals) for p in strategy.plugins)
    for exp in stream.train_stream:  # task 0; then 1 and 2 with the regulariser over k of the earlier
        strategy.train(exp)
    assert counter.counts == [0, 0, 0]
    assert strategy.hypercl.last_reg is not None and float(strategy.hypercl.last_reg) > 0


def test_naive_through_the_runners_plugins_never_waits_for_the_device():
    from hypercl.speedups import FlushDenormals

    counter = CountSyncs(start=2, stop=6)
    strategy = baseline(Naive, [DeviceData(), StepBudget(8), FlushDenormals(), StopOnNonFiniteLoss(), counter])
    for exp in conflicting_stream(n_tasks=2, n=100).train_stream:
        strategy.train(exp)
    assert counter.counts == [0, 0]


def test_a_non_finite_loss_on_a_fused_optimizer_is_caught_without_a_sync_and_nothing_moves():
    x, y = torch.randn(100, 16), torch.arange(100) % 4
    x[37] = float("nan")  # in the 4th batch of 10 in order
    bm = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[(x, y)], task_labels=[0])
    strategy = baseline(Naive, [DeviceData(), StopOnNonFiniteLoss()])
    snapshots = []

    class Snap:
        def __getattr__(self, name):
            if name.startswith(("before_", "after_")):
                return lambda *a, **k: None
            raise AttributeError(name)

        def after_update(self, strategy, **kwargs):
            snapshots.append({k: v.clone() for k, v in strategy.model.state_dict().items()})

    strategy.plugins.append(Snap())
    from hypercl.guards import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at iteration 4 of experience 0 .*iteration 4 overall"):
        strategy.train(bm.train_stream[0], shuffle=False)
    assert len(snapshots) == 10  # the epoch ran to its end (the flag is read there) ...
    for later in snapshots[3:]:  # ... but from the bad step on, no update moved anything
        assert all(torch.equal(later[k], snapshots[2][k]) for k in later)
    assert not hasattr(strategy.optimizer, "found_inf")


def test_device_data_warns_once_per_reason_and_never_for_supported_data():
    stream = conflicting_stream(n_tasks=2, n=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="No loggers specified")
        strategy = baseline(Naive, [DeviceData(), StepBudget(3)])
        for exp in stream.train_stream:
            strategy.train(exp)
        strategy.eval(stream.test_stream)
    assert strategy.clock.train_iterations == 6


def test_mnist_is_gathered_in_batches_with_the_values_avalanches_samples_have(mnist, monkeypatch):
    """Avalanche's MNIST through PixelsPermutation, Pad and Normalize (Permuted MNIST as the
    runner builds it) is read and transformed in batches, not sample by sample (seconds per
    benchmark), and gives bit for bit the inputs and labels of the dataset's own samples."""
    from avalanche.benchmarks.classic import PermutedMNIST
    from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST
    from torchvision import transforms

    pad = transforms.Compose([transforms.Pad(2), transforms.Normalize((0.1307,), (0.3081,))])
    bm = PermutedMNIST(n_experiences=1, return_task_id=True, seed=0, train_transform=pad, eval_transform=pad,
                       dataset_root=mnist)  # fmt: skip
    data = bm.test_stream[0].dataset.eval()
    reads = Counter()
    read = TensorMNIST.__getitem__
    monkeypatch.setattr(TensorMNIST, "__getitem__", lambda self, i: reads.update([i]) or read(self, i))
    got = DataCache("cpu").tensors(data)
    assert not isinstance(got, str), got
    assert sum(reads.values()) < 20  # a few samples checked against the batches, not 10,000 read one by one
    monkeypatch.undo()
    picks = torch.randperm(len(data))[:300].tolist()
    assert got.x.shape == (10000, 1, 32, 32) and got.transform == ()
    assert torch.equal(got.x[picks], torch.stack([data[i][0] for i in picks]))
    assert got.y.tolist() == [int(v) for v in data.targets]
    assert got.t.tolist() == [int(v) for v in data.targets_task_labels] == [0] * 10000
