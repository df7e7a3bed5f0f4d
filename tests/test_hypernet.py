"""The chunked hypernetwork: layout, batching, parity with the target, initial scale."""

import copy
import math

import pytest
import torch
from torch import nn

from hypercl import MLP, ChunkedHyperNetwork, HyperCLModel, HyperNetConfig, WeightLayout


class TinyResNet(nn.Module):
    """A residual CNN with batch norm, written the ordinary way."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, n_classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.stem(x)))
        h = torch.relu(h + self.bn2(self.conv(h)))
        return self.head(h.mean((2, 3)))


TARGETS = {
    "mlp": (lambda: MLP(784, (400, 400), 10), (4, 1, 28, 28)),
    "cnn": (lambda: TinyResNet(), (4, 3, 8, 8)),
}


@pytest.mark.parametrize("name", TARGETS)
def test_generated_weights_have_the_targets_names_and_shapes(name):
    make, _ = TARGETS[name]
    target = make()
    model = HyperCLModel(target, hnet=HyperNetConfig(chunk_size=1000))
    model.add_task(0)
    weights = model.generate(0)
    expected = {n: p.shape for n, p in target.named_parameters()}
    assert {n: w.shape for n, w in weights.items()} == expected
    assert list(weights) == list(expected)  # the target's own order
    assert model.hnet.n_weights == sum(p.numel() for p in target.parameters())


@pytest.mark.parametrize("name", TARGETS)
def test_functional_call_equals_the_target_loaded_with_the_same_weights(name):
    make, shape = TARGETS[name]
    target = make()
    model = HyperCLModel(target, hnet=HyperNetConfig(chunk_size=1000)).eval()
    model.add_task(3)
    x = torch.randn(shape)
    loaded = copy.deepcopy(target).eval()
    loaded.load_state_dict(model.generate(3), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 3), loaded(x), rtol=0, atol=0)
        # and the generated weights really are used: the target's own differ
        assert not torch.allclose(model(x, 3), target.eval()(x))


def test_all_chunks_of_all_tasks_in_one_pass_equal_one_task_at_a_time():
    layout = WeightLayout.from_module(MLP(20, (30,), 7))
    hnet = ChunkedHyperNetwork(layout, HyperNetConfig(hidden=(8, 9), chunk_size=64))
    embs = torch.randn(5, hnet.config.task_emb_dim)
    batched = hnet(embs)
    assert batched.shape == (5, layout.n_weights)
    assert hnet.n_chunks == math.ceil(layout.n_weights / 64)  # surplus of the last chunk dropped
    for t in range(5):
        torch.testing.assert_close(batched[t], hnet(embs[t : t + 1])[0])
    # chunk i of a task's weights is the MLP applied to [e, c_i]: check one chunk by hand
    e, c = embs[2], hnet.chunk_embs[1]
    w = torch.cat([hnet.task_in.weight, hnet.chunk_in.weight], 1)
    h = torch.relu(w @ torch.cat([e, c]) + hnet.chunk_in.bias)
    h = hnet.layers[1](torch.relu(hnet.layers[0](h)))
    manual = hnet.out_shift[64:128] + hnet.out_scale[64:128] * h
    torch.testing.assert_close(batched[2, 64:128], manual)


def test_linear_hypernetwork_without_hidden_layers():
    layout = WeightLayout.from_module(MLP(10, (12,), 3))
    hnet = ChunkedHyperNetwork(layout, HyperNetConfig(hidden=(), chunk_size=50), reference=None)
    assert len(hnet.layers) == 0 and hnet.task_in.out_features == 50
    e = torch.randn(2, hnet.config.task_emb_dim)
    # a linear map of the input: h(a e1 + b e2) - h(0) = a (h(e1) - h(0)) + b (h(e2) - h(0))
    zero = hnet(torch.zeros(1, e.shape[1]))[0]
    mixed = hnet((0.3 * e[0] - 2.0 * e[1])[None])[0] - zero
    torch.testing.assert_close(mixed, 0.3 * (hnet(e[:1])[0] - zero) - 2.0 * (hnet(e[1:])[0] - zero), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TARGETS)
def test_generated_weights_start_at_the_scale_of_pytorchs_default_init(name):
    make, _ = TARGETS[name]
    default = make()  # PyTorch's own init, the scale to match
    model = HyperCLModel(make(), hnet=HyperNetConfig(chunk_size=2000))
    for t in range(8):
        model.add_task(t)
    weights = [model.generate(t) for t in range(8)]
    ratios = {}
    for n, p in default.named_parameters():
        generated = torch.stack([w[n] for w in weights])
        if p.numel() >= 16 and p.std() > 0:  # random tensors: match the spread
            ratios[n] = (generated.std() / p.std()).item()
        else:  # constant tensors (norm scales at 1, zero biases): start near the value
            assert generated.mean().item() == pytest.approx(p.mean().item(), abs=0.15), n
            assert generated.std().item() < 0.2, n
    assert ratios and all(0.8 < r < 1.25 for r in ratios.values()), ratios


def test_paper_init_has_zero_biases_and_no_output_map():
    hnet = HyperCLModel(MLP(30, (20,), 4), hnet=HyperNetConfig(init="xavier", chunk_size=100)).hnet
    assert not hnet.scaled
    assert all((layer.bias == 0).all() for layer in hnet.layers)
    assert (hnet.chunk_in.bias == 0).all()


def test_automatic_chunk_size_keeps_the_paper_split_mnist_hnet_compressive():
    cfg = HyperNetConfig()  # paper: 10-10 hidden, 96/96 embeddings
    n_weights = WeightLayout.from_module(MLP(784, (400, 400), 2)).n_weights
    chunk = cfg.auto_chunk_size(n_weights)
    ratio = cfg.n_params(n_weights, chunk) / n_weights
    assert 0.95 < ratio <= 1.0
    assert cfg.n_params(n_weights, chunk + 1000) > n_weights  # the largest such chunk, near enough
    # the paper's hand-picked 42000 lands in the same regime
    assert cfg.n_params(n_weights, 42000) / n_weights == pytest.approx(0.979, abs=0.001)


def test_compression_ratio_counts_embeddings():
    model = HyperCLModel(MLP(784, (400, 400), 2), hnet=HyperNetConfig(chunk_size=42000))
    before = model.compression_ratio()
    model.add_task(0)
    assert model.compression_ratio() == pytest.approx(before + 96 / model.layout.n_weights)


def test_partial_hypernetwork_generates_only_the_selected_parameters():
    target = MLP(20, (30, 30), 5)
    model = HyperCLModel(target, generate="net.5.*", hnet=HyperNetConfig(chunk_size=40))
    model.add_task(0)
    assert set(model.generate(0)) == {"net.5.weight", "net.5.bias"}
    trainable = {n for n, p in target.named_parameters() if p.requires_grad}
    assert trainable == {"net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"}
    # the shared layers are the target's own; the last layer comes from the hypernetwork
    x = torch.randn(3, 20)
    features = target.net[:5](x)
    w = model.generate(0)
    torch.testing.assert_close(model(x, 0), features @ w["net.5.weight"].T + w["net.5.bias"])

    frozen = HyperCLModel(MLP(20, (30, 30), 5), generate=lambda n, p: n.startswith("net.5"), freeze_shared=True)
    assert not any(p.requires_grad for p in frozen.target.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive"),
        ({"task_emb_dim": 0}, "task_emb_dim must be at least 1"),
        ({"chunk_emb_dim": 0}, "chunk_emb_dim must be at least 1"),
        ({"hidden": (10, 0)}, "hidden sizes must be positive"),
        ({"activation": nn.ReLU()}, "nn.Module class such as nn.ReLU"),
        ({"init": "hyperfan"}, "init must be 'variance' or 'xavier'"),
    ],
)
def test_config_that_cannot_work_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyperNetConfig(**kwargs)


def test_targets_and_selections_that_leave_nothing_to_generate_are_refused():
    with pytest.raises(ValueError, match="has no parameters"):
        HyperCLModel(nn.ReLU())
    with pytest.raises(ValueError, match=r"selects none of the target's parameters.*net\.1\.weight"):
        HyperCLModel(MLP(4, (3,), 2), generate="fc.*")
