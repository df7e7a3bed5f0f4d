"""Untrained tasks in evaluation, and saving and loading a HyperCL model the PyTorch and the
Avalanche way."""

import copy
import io

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.models import MTSimpleMLP
from avalanche.training import Naive
from helpers import conflicting_stream, evaluator
from torch import nn

from hypercl import MLP, HyperCL, HyperNetConfig, HyperCLModel, StepBudget

HNET = HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)


class BNTarget(nn.Module):
    """A small MLP with batch norm, so that per-task running statistics exist."""

    def __init__(self, n_out: int = 4) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Linear(32, n_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def build(target=None, **kwargs) -> HyperCL:
    kwargs = {"hnet": HNET, "lr": 5e-3, "train_mb_size": 32, "train_epochs": 4, "evaluator": evaluator(), **kwargs}
    return HyperCL(target=target or BNTarget(), **kwargs)


def tensors(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- untrained tasks
def test_the_initial_embedding_is_where_training_starts_and_draws_nothing_global():
    model = HyperCLModel(MLP(16, (32,), 4), hnet=HNET)
    first = model.initial_embedding(3).clone()
    state = torch.get_rng_state()
    model.add_task(3)
    assert torch.equal(torch.get_rng_state(), state)  # creating a task leaves the global generator alone
    assert torch.equal(model.task_embs["3"].detach(), first)
    # N(0, 1) over many tasks, distinct per task
    embs = torch.stack([model.initial_embedding(t) for t in range(300)])
    assert abs(embs.mean().item()) < 0.05 and abs(embs.std().item() - 1) < 0.05
    assert torch.unique(embs[:, 0]).numel() == 300
    # the same seed (it travels in the state dict) gives the same embeddings in another model
    other = HyperCLModel(MLP(16, (32,), 4), hnet=HNET)
    assert not torch.equal(other.initial_embedding(3), first)
    other.emb_seed = model.emb_seed
    other._initial_embs.clear()
    assert torch.equal(other.initial_embedding(3), first)


def test_evaluating_the_whole_stream_every_epoch_trains_exactly_as_never_evaluating():
    bm = conflicting_stream(n_tasks=3)

    def run(evaluate: bool) -> HyperCL:
        torch.manual_seed(1)
        strategy = build(eval_every=1 if evaluate else -1)
        for exp in bm.train_stream:
            if evaluate:
                strategy.train(exp, eval_streams=[bm.test_stream])
                state = torch.get_rng_state()
                res = strategy.eval(bm.test_stream)
                assert torch.equal(torch.get_rng_state(), state)  # an evaluation draws nothing that stays
                assert all(0 <= v <= 1 for k, v in res.items() if k.startswith("Top1_Acc_Exp"))
            else:
                strategy.train(exp)
        return strategy

    evaluated, plain = run(True), run(False)
    assert_same_tensors(tensors(evaluated.model), tensors(plain.model))
    assert evaluated.model.tasks == plain.model.tasks == [0, 1, 2]
    assert evaluated.clock.train_iterations == plain.clock.train_iterations == 3 * 4 * 8


def test_a_task_label_that_comes_back_in_another_experience_warns_with_the_way_out():
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    bm = tensors_benchmark(train_tensors=[(x, y), (x, (y + 1) % 4)], test_tensors=[(x, y), (x, y)], task_labels=[0, 0])
    strategy = build(plugins=[StepBudget(1)])
    strategy.train(bm.train_stream[0])
    with pytest.warns(UserWarning, match=r"Experience 1 brings task label 0.*scenario='class'"):
        strategy.train(bm.train_stream[1])
    strategy.train(bm.train_stream[1])  # the same experience again: no second warning (checked below)
    assert strategy.model._warned == {0}


@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_domain_and_class_models_evaluate_before_any_training_and_on_unseen_classes(scenario):
    bm = conflicting_stream(n_tasks=2)
    strategy = build(target=MLP(16, (32,), 4), scenario=scenario, inference="entropy", eval_every=1)
    before = strategy.eval(bm.test_stream)
    assert all(0 <= v <= 1 for k, v in before.items() if "Acc" in k)
    strategy.train(bm.train_stream[0], eval_streams=[bm.test_stream])
    after = strategy.eval(bm.test_stream)
    assert after["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.9


# ----------------------------------------------------------------------------- state dicts
def trained(scenario: str = "task", n_tasks: int = 2, **kwargs) -> tuple[HyperCL, object]:
    bm = conflicting_stream(n_tasks=3)
    torch.manual_seed(0)
    strategy = build(scenario=scenario, reset_optimizer_state=True, **kwargs)
    for exp in bm.train_stream[:n_tasks]:
        strategy.train(exp)
    return strategy, bm


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_load_state_dict_into_a_fresh_strategy_recreates_every_task_and_evaluates_identically(scenario):
    strategy, bm = trained(scenario)
    saved = copy.deepcopy(strategy.model.state_dict())
    torch.manual_seed(123)  # another initialisation, to be overwritten
    fresh = build(scenario=scenario, reset_optimizer_state=True)
    fresh.model.load_state_dict(saved)
    assert fresh.model.tasks == [0, 1]
    assert fresh.model._task_classes == strategy.model._task_classes
    assert_same_tensors(tensors(fresh.model), tensors(strategy.model))
    x = torch.randn(40, 16)
    for model in (strategy.model, fresh.model):
        model.eval()
    with torch.no_grad():
        if scenario == "task":
            labels = torch.arange(40) % 3  # task 2 untrained: its initial network, the same in both
            assert torch.equal(fresh.model(x, labels), strategy.model(x, labels))
        else:
            assert torch.equal(fresh.model(x), strategy.model(x))
    assert fresh.eval(bm.test_stream) == strategy.eval(bm.test_stream)

    # Training goes on as it would have: the regulariser's targets come back from the model.
    for s in (strategy, fresh):
        torch.manual_seed(7)
        s.train(bm.train_stream[2])
    assert fresh.hypercl.targets.tasks == [0, 1, 2]
    assert_same_tensors(tensors(fresh.model), tensors(strategy.model))


def test_whole_module_save_and_weights_only_state_dict_round_trip():
    strategy, _ = trained()
    model = strategy.model.eval()
    x, labels = torch.randn(20, 16), torch.arange(20) % 2
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # tensors and plain values only
    fresh = build().model
    fresh.load_state_dict(state)
    with torch.no_grad():
        expected = model(x, labels)
        assert torch.equal(again.eval()(x, labels), expected)
        assert torch.equal(fresh.eval()(x, labels), expected)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hnet": HyperNetConfig(hidden=(20,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)}, r"hnet\.hidden: saved \[16\], this model \[20\]"),
        ({"target": BNTarget(n_out=6)}, r"target\.fc2\.weight: saved \[4, 32\], this model \[6, 32\]"),
        ({"generate": "fc2.*"}, r"generate: saved \['fc1.weight'.*this model \['fc2.weight', 'fc2.bias'\]"),
        ({"scenario": "class"}, r"scenario: saved 'task', this model 'class'"),
    ],
)
def test_a_state_dict_of_another_model_names_what_differs(change, named):
    strategy, _ = trained()
    other = build(**change).model
    with pytest.raises(ValueError, match=named + r".*Build the model with the same target"):
        other.load_state_dict(strategy.model.state_dict())


# ----------------------------------------------------------------------------- Avalanche's checkpoints
def naive() -> Naive:
    model = MTSimpleMLP(input_size=16, hidden_size=32)
    return Naive(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=5e-3), train_mb_size=32, train_epochs=15,
        evaluator=evaluator(),
    )  # fmt: skip


def hypercl() -> HyperCL:
    return build(target=MLP(16, (32,), 4), beta=0.05, train_epochs=15)


def avalanche_round_trip(make, path, exclude=None):
    """Avalanche's checkpointing example: train 2 of 3 experiences saving after each, then
    a fresh strategy resumes from the file and trains the last."""
    bm = conflicting_stream(n_tasks=3)
    torch.manual_seed(0)
    strategy, start = maybe_load_checkpoint(make(), path)
    assert start == 0
    for exp in bm.train_stream[start:2]:
        strategy.train(exp)
        save_checkpoint(strategy, path, exclude=exclude)
    saved = copy.deepcopy(tensors(strategy.model))
    resumed, start = maybe_load_checkpoint(make(), path)
    assert start == 2
    assert_same_tensors(tensors(resumed.model), saved)
    for exp in bm.train_stream[start:]:
        resumed.train(exp)
    return resumed.eval(bm.test_stream)


@pytest.mark.parametrize("make", [naive, hypercl])
def test_avalanche_save_checkpoint_as_in_its_example(make, tmp_path):
    try:
        avalanche_round_trip(naive, tmp_path / "naive.pkl")
    except Exception as err:  # noqa: BLE001 - whatever breaks Avalanche's own strategy here
        pytest.xfail(
            f"Avalanche's save_checkpoint fails for its own Naive strategy in this environment "
            f"({type(err).__name__}: {str(err)[:120]}): dill cannot pickle the optimizer. "
            "Use hypercl.checkpoint (tensors only), or save_checkpoint(..., exclude=['optimizer'])."
        )
    res = avalanche_round_trip(make, tmp_path / "run.pkl")
    assert res["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.9


@pytest.mark.parametrize("make", [naive, hypercl])
def test_avalanche_save_checkpoint_without_the_optimizer_resumes(make, tmp_path):
    res = avalanche_round_trip(make, tmp_path / "run.pkl", exclude=["optimizer"])
    accs = [res[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] for t in range(3)]
    assert min(accs) > 0.9, accs


@pytest.mark.xfail(
    raises=ValueError,
    strict=True,
    reason="avalanche-lib 0.6 removed CheckpointPlugin: its constructor raises 'Please use "
    "save_checkpoint and maybe_load_checkpoint instead', for every strategy",
)
def test_avalanche_checkpoint_plugin():
    from avalanche.training.plugins.checkpoint import CheckpointPlugin

    build(plugins=[CheckpointPlugin(None)])
