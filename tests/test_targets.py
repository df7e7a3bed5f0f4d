"""ResNet-32 and ZenkeNet under a hypernetwork, per-task batch-norm statistics,
batched augmentation and the epoch learning-rate schedule."""

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.nn import functional as F

from hypercl import HyperCL, HyperCLModel, HyperNetConfig, StepBudget
from hypercl.augment import BatchAugment, random_crop_flip
from hypercl.bench.presets import preset
from hypercl.inference import task_logits
from hypercl.schedule import KERAS_RESNET, EpochSchedule
from hypercl.targets import ResNet, ZenkeNet, resnet32

SMALL_HNET = HyperNetConfig(hidden=(), chunk_size=4000, task_emb_dim=8, chunk_emb_dim=8)


def test_resnet32_has_32_weight_layers_and_the_usual_size():
    net = resnet32(10)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 32  # 1 + 3 stages x 5 blocks x 2 convs + 1 linear
    assert sum(p.numel() for p in net.parameters()) == 464_154  # "0.46 M" (He et al.)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_zenkenet_has_the_keras_layers():
    net = ZenkeNet(10)
    convs = 3 * 3 * (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64) + 2 * (32 + 64)
    dense = (64 * 6 * 6) * 512 + 512 + 512 * 10 + 10  # 32 -> 32 -> 30 -> 15 -> 15 -> 13 -> 6
    assert sum(p.numel() for p in net.parameters()) == convs + dense
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("make", [resnet32, ZenkeNet], ids=["resnet32", "zenkenet"])
def test_generated_weights_equal_to_the_targets_own_give_its_outputs(make):
    torch.manual_seed(1)
    model = HyperCLModel(make(10), hnet=SMALL_HNET)
    model.add_task(0)
    plain = make(10)
    plain.load_state_dict(model.generate(0) | model.stats(0), strict=False)
    # ... and the parameters the hypernetwork does not generate (none here) are shared
    assert set(model.generate(0)) == {n for n, _ in plain.named_parameters()}
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    assert torch.allclose(model(x, 0), plain(x), atol=1e-5)
    model.train(), plain.train()
    torch.manual_seed(2)
    a = model(x, 0)
    torch.manual_seed(2)  # same dropout masks
    assert torch.allclose(a, plain(x), atol=1e-5)


@pytest.mark.parametrize("make", [resnet32, ZenkeNet], ids=["resnet32", "zenkenet"])
def test_gradients_reach_every_hypernetwork_parameter_and_the_task_embedding(make):
    model = HyperCLModel(make(10), hnet=SMALL_HNET)
    model.add_task(0)
    out = model(torch.randn(4, 3, 32, 32), 0)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for name, p in [*model.hnet.named_parameters(), ("task 0", model.task_embs["0"])]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.target.parameters())  # never used directly


def test_each_task_updates_only_its_own_running_statistics():
    model = HyperCLModel(ResNet(4, blocks=1), hnet=SMALL_HNET)
    for t in (0, 1):
        model.add_task(t)
    assert len(model.stat_names) == 3 * 7  # 7 batch norms: mean, var, count
    x = torch.randn(16, 3, 8, 8)
    model.train()
    model(x, 0)
    before = {n: s.clone() for n, s in model.stats(0).items()}
    with torch.no_grad():  # what task 1's first batch norm must record: 0.1 x its batch moments
        h = F.conv2d(3 * x + 2, model.generate(1)["conv.weight"], padding=1)
    model(3 * x + 2, 1)
    assert all(torch.equal(before[n], s) for n, s in model.stats(0).items())
    assert before["bn.num_batches_tracked"] == 1 and model.stats(1)["bn.num_batches_tracked"] == 1
    assert torch.allclose(model.stats(1)["bn.running_mean"], 0.1 * h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.stats(1)["bn.running_var"], 0.9 + 0.1 * h.var((0, 2, 3)), atol=1e-4)
    assert torch.equal(model.target.bn.running_mean, torch.zeros(16))  # the target's own: untouched
    assert any(k.startswith("task_stats.1.") for k in model.state_dict())
    # evaluation: each task with its own statistics, batched over tasks as one per task
    model.eval()
    both = task_logits(model, x, [0, 1])
    assert torch.allclose(both[0], model(x, 0), atol=1e-5) and torch.allclose(both[1], model(x, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"No task embedding for task label\(s\) \[5\]"):
        model.stats(5)


def _shifted_tasks(n: int = 96, seed: int = 0):
    """Two 4-class image tasks whose inputs live on very different scales."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.arange(n) % 4
    x = [templates[y] + 0.3 * torch.randn(n, 3, 8, 8, generator=g) for _ in range(2)]
    test = [(x[1], y), (10 * x[1] + 5, (y + 1) % 4)]
    bm = tensors_benchmark(
        train_tensors=[(x[0], y), (10 * x[0] + 5, (y + 1) % 4)],
        test_tensors=test,
        task_labels=[0, 1],
        complete_test_set_only=False,
    )
    return bm, test


@pytest.mark.parametrize("task_stats", [True, False])
def test_an_old_task_needs_its_own_batch_norm_statistics(task_stats):
    bm, test = _shifted_tasks()
    torch.manual_seed(0)
    strategy = HyperCL(
        target=ResNet(4, blocks=1, width=8), hnet=SMALL_HNET, beta=0.05, lr=3e-3, train_mb_size=32,
        task_stats=task_stats, plugins=[StepBudget(60)], evaluator=None,
    )  # fmt: skip
    model = strategy.model
    accuracy = []
    for exp in bm.train_stream:
        strategy.train(exp)
        model.eval()
        with torch.no_grad():
            x, y = test[0]
            accuracy.append((model(x, 0).argmax(1) == y).float().mean().item())
    assert accuracy[0] > 0.9  # task 0 learned
    if task_stats:
        assert accuracy[1] > 0.9  # and kept
    else:
        assert accuracy[1] < 0.6  # statistics of task 1's inputs: task 0 collapses


def test_random_crop_flip_shifts_and_mirrors_each_image():
    x = torch.randn(64, 3, 6, 6)
    out = random_crop_flip(x, padding=2, flip=True)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    kinds = set()
    for i in range(len(x)):
        match = [
            (dy, dx, f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy : dy + 6, dx : dx + 6]))
        ]
        assert match, i  # every output is a shifted, maybe mirrored, crop of its own image
        kinds.add(match[0][2])
    assert kinds == {False, True}


def test_batch_augment_changes_training_batches_only():
    seen = {}

    class Spy(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kw):
            seen["raw"] = strategy.mbatch[0].clone()

        def after_forward(self, strategy, **kw):
            seen["trained"] = strategy.mbatch[0].clone()

        def after_eval_forward(self, strategy, **kw):
            seen["eval"] = strategy.mbatch[0].clone()

    bm, test = _shifted_tasks(n=32)
    augment = BatchAugment()
    strategy = HyperCL(target=ResNet(4, blocks=1, width=8), hnet=SMALL_HNET, train_mb_size=32,
                       plugins=[augment, Spy(), StepBudget(1)], evaluator=None)  # fmt: skip
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[:1])
    assert seen["raw"].shape == seen["trained"].shape and not torch.equal(seen["raw"], seen["trained"])
    assert torch.equal(seen["eval"], test[0][0])
    with pytest.raises(ValueError, match="crops and flips images"):
        augment.before_forward(type("S", (), {"mbatch": [torch.randn(4, 10)]})())


def test_epoch_schedule_steps_the_rate_down_and_restores_it():
    assert [EpochSchedule(KERAS_RESNET).factor(e) for e in (1, 80, 81, 121, 161, 181, 200)] == [
        1.0, 1.0, 0.1, 0.01, 1e-3, 5e-4, 5e-4,
    ]  # fmt: skip
    rates = []

    class Spy(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kw):
            rates.append(strategy.optimizer.param_groups[0]["lr"])

    bm, _ = _shifted_tasks(n=64)
    strategy = HyperCL(target=ResNet(4, blocks=1, width=8), hnet=SMALL_HNET, lr=1e-2, train_mb_size=32,
                       train_epochs=3, plugins=[EpochSchedule([(2, 0.1), (3, 0.01)]), Spy()], evaluator=None)  # fmt: skip
    strategy.train(bm.train_stream[0])
    assert rates == pytest.approx([1e-2] * 2 + [1e-3] * 2 + [1e-4] * 2)
    assert strategy.optimizer.param_groups[0]["lr"] == 1e-2
    with pytest.raises(ValueError, match="epoch >= 1, factor > 0"):
        EpochSchedule([(0, 0.1)])


def test_cifar_paper_presets_are_the_papers():
    resnet = preset("split-cifar100", "paper")
    assert (resnet.target, resnet.epochs, resnet.batch_size, resnet.lr, resnet.beta) == ("resnet32", 200, 32, 1e-3, 0.05)
    assert (resnet.hnet.hidden, resnet.hnet.chunk_size, resnet.hnet.task_emb_dim, resnet.hnet.chunk_emb_dim) == ((), 7000, 32, 32)
    assert resnet.augment and resnet.lr_schedule == KERAS_RESNET
    zenke = preset("split-cifar10-100", "paper-zenke")
    assert (zenke.target, zenke.epochs, zenke.batch_size, zenke.lr, zenke.adam_betas, zenke.beta) == (
        "zenkenet", 80, 256, 1e-4, (0.5, 0.999), 0.01,
    )  # fmt: skip
    assert (zenke.hnet.hidden, zenke.hnet.chunk_size, zenke.hnet.task_emb_dim, zenke.hnet.chunk_emb_dim) == ((100, 150, 200), 5500, 48, 80)
    assert not zenke.augment
    model = HyperCLModel(ZenkeNet(10), hnet=zenke.hnet)
    assert 0.93 < model.compression_ratio() < 0.98
