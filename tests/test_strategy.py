"""HyperCL as an Avalanche strategy: training loop, gradients, metrics, errors."""

import io

import pytest
import torch
from avalanche.benchmarks import benchmark_from_datasets, tensors_benchmark
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.core import SupervisedPlugin
from avalanche.logging import TextLogger
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from helpers import accuracy_matrix, conflicting_stream, evaluator

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget
from hypercl.guards import NonFiniteLossError

SMALL_HNET = HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)


def small_hypercl(**kwargs):
    kwargs = {"hnet": SMALL_HNET, "lr": 5e-3, "train_mb_size": 32, "evaluator": evaluator(), **kwargs}
    return HyperCL(target=MLP(16, (32,), 4), **kwargs)


class Probe(SupervisedPlugin):
    """Calls ``fn(strategy)`` at one hook and keeps what it returns, per experience."""

    def __init__(self, hook, fn):
        super().__init__()
        self.seen: dict[int, list] = {}
        setattr(self, hook, lambda strategy, **kw: self.seen.setdefault(
            strategy.experience.current_experience, []).append(fn(strategy)))


@pytest.mark.parametrize("lookahead", [False, True])
def test_gradients_reach_exactly_the_hnet_chunk_embeddings_and_current_task_embedding(lookahead):
    def grads(strategy):
        return {n: None if p.grad is None else p.grad.abs().sum().item() for n, p in strategy.model.named_parameters()}

    probe = Probe("after_backward", grads)
    strategy = small_hypercl(lookahead=lookahead, plugins=[probe, StepBudget(2)])
    bm = conflicting_stream(n_tasks=2)
    strategy.train(bm.train_stream)
    seen = probe.seen[1][-1]  # a step of task 1, regularised towards task 0
    hnet = {n for n in seen if n.startswith("hnet.")}
    assert "hnet.chunk_embs" in hnet and len(hnet) == 6
    reached = {n for n, g in seen.items() if g is not None and g > 0}
    assert reached == hnet | {"task_embs.1"}
    assert seen["task_embs.0"] is None
    assert all(seen[n] is None for n in seen if n.startswith("target."))


@pytest.mark.parametrize(("targets", "reg_tasks"), [("stored", None), ("frozen", None), ("stored", 1), ("frozen", 1)])
def test_regulariser_is_exactly_zero_after_each_snapshot_and_positive_after_a_step(targets, reg_tasks):
    probe = Probe("after_update", lambda s: s.hypercl.last_reg and s.hypercl.last_reg.item())
    # without lookahead: with it, even the first step measures h at theta + delta_theta
    strategy = small_hypercl(reg_targets=targets, reg_tasks=reg_tasks, lookahead=False, plugins=[probe, StepBudget(5)])
    strategy.train(conflicting_stream(n_tasks=3).train_stream)
    assert probe.seen[0] == [None] * 5  # nothing to regularise while learning the first task
    for exp in (1, 2):
        first, *later = probe.seen[exp]
        if reg_tasks is None or targets == "frozen":
            assert first == 0.0
        else:
            # a subset goes through the hypernetwork in a smaller batch than the
            # snapshot did, and BLAS rounds a batch of 1 differently: zero up to rounding
            assert first < 1e-9
        assert all(r > 1e-6 for r in later)


def test_hypercl_keeps_conflicting_tasks_where_naive_forgets():
    bm = conflicting_stream(n_tasks=3)
    hypercl = accuracy_matrix(small_hypercl(beta=0.05, train_epochs=15), bm)
    naive_model = MLP(16, (32,), 4)
    naive = Naive(
        model=naive_model,
        optimizer=torch.optim.Adam(naive_model.parameters(), lr=5e-3),
        train_mb_size=32,
        train_epochs=15,
        evaluator=evaluator(),
    )
    naive = accuracy_matrix(naive, bm)
    # both learn every task while training on it
    assert min(hypercl[i][i] for i in range(3)) > 0.97
    assert min(naive[i][i] for i in range(3)) > 0.97
    # task 1 after all tasks: HyperCL within 2 points, Naive down by more than 30
    assert hypercl[0][0] - hypercl[2][0] <= 0.02
    assert naive[0][0] - naive[2][0] > 0.30


def test_mixed_task_eval_batches_equal_per_task_results():
    bm = conflicting_stream(n_tasks=2)
    strategy = small_hypercl(plugins=[StepBudget(2)])  # half-trained: accuracies below 1
    strategy.train(bm.train_stream)
    per_task = strategy.eval(bm.test_stream)
    acc = [per_task[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}"] for t in (0, 1)]
    assert min(acc) < 0.95
    mixed = bm.test_stream[0].dataset.concat(bm.test_stream[1].dataset)
    stream = with_task_labels(benchmark_from_datasets(test=[mixed])).test_stream
    assert stream[0].task_labels == [0, 1]
    probe = Probe("after_eval_forward", lambda s: len(s.mb_task_id.unique()))
    strategy.plugins.append(probe)
    strategy.eval_mb_size = 100  # 256 samples of task 0, then 256 of task 1
    res = strategy.eval(stream)
    assert probe.seen[0] == [1, 1, 2, 1, 1, 1]
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Exp000"] == pytest.approx(sum(acc) / 2)

    model = strategy.model.eval()
    x = torch.randn(10, 16)
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1])
    with torch.no_grad():
        out = model(x, labels)
        for t in (0, 1):
            torch.testing.assert_close(out[labels == t], model(x[labels == t], t))


def test_an_untrained_task_evaluates_with_its_initial_network_and_cannot_train_by_accident():
    bm = conflicting_stream(n_tasks=3)
    strategy = small_hypercl(plugins=[StepBudget(2)])
    strategy.train(bm.train_stream[0])
    res = strategy.eval(bm.test_stream)
    assert 0 <= res["Top1_Acc_Stream/eval_phase/test_stream/Task002"] <= 1
    model = strategy.model.eval()
    assert model.tasks == [0]  # evaluation created nothing
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model.run_weights(x, model.hnet(model.initial_embedding(2)[None])[0], 2)
        torch.testing.assert_close(model(x, torch.full((5,), 2)), expected)
    model.train()
    with pytest.raises(ValueError, match=r"No task embedding for task label\(s\) \[1\].*trained on task labels \[0\]"):
        model(x, torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="needs the task label of every sample.*scenario='class'"):
        strategy.model(torch.randn(2, 16))


def test_too_few_outputs_for_the_labels_is_a_clear_error():
    bm = conflicting_stream(n_tasks=1)
    strategy = HyperCL(target=MLP(16, (8,), 2), hnet=SMALL_HNET, evaluator=None, plugins=[StepBudget(1)])
    with pytest.raises(ValueError, match="class labels up to 3 but the target has 2 outputs"):
        strategy.train(bm.train_stream[0])


def test_metrics_and_loggers_work_unchanged():
    text = io.StringIO()
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[TextLogger(text)])
    strategy = small_hypercl(evaluator=ev, plugins=[StepBudget(3)])
    bm = conflicting_stream(n_tasks=2)
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[:1])
    assert "Top1_Acc_Stream/eval_phase/test_stream/Task000" in text.getvalue()


def test_optimizer_factory_and_state_reset_per_experience():
    def state_size(strategy):
        return sum(1 for state in strategy.optimizer.state.values() if state)

    for reset, expected in ((True, 0), (False, 6 + 1)):  # hnet tensors + task 0's embedding
        probe = Probe("before_training_epoch", state_size)
        strategy = small_hypercl(
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
            reset_optimizer_state=reset,
            plugins=[probe, StepBudget(3)],
        )
        assert isinstance(strategy.optimizer, torch.optim.SGD)
        strategy.train(conflicting_stream(n_tasks=2).train_stream)
        assert probe.seen[1][0] == expected


def test_step_budget_trains_exactly_n_steps_per_experience():
    probe = Probe("after_training_exp", lambda s: s.clock.train_exp_iterations)
    strategy = small_hypercl(train_epochs=1, plugins=[probe, StepBudget(21)])  # 8 batches an epoch
    strategy.train(conflicting_stream(n_tasks=3).train_stream)
    assert probe.seen == {0: [21], 1: [21], 2: [21]}
    assert strategy.train_epochs == 1


def test_a_non_finite_loss_stops_training_before_the_update_and_says_where():
    bm = conflicting_stream(n_tasks=2)
    strategy = small_hypercl(plugins=[StepBudget(3)])
    strategy.train(bm.train_stream[0])
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    x, y = torch.full((64, 16), float("nan")), torch.arange(64) % 4
    poisoned = tensors_benchmark(train_tensors=[(x, y)], test_tensors=[(x, y)], task_labels=[1])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at iteration 1 of experience 0 \(task label\(s\) \[1\]\), "
                       r"iteration 4 overall.*last finite step.*Lower the learning rate"):  # fmt: skip
        strategy.train(poisoned.train_stream[0])
    after = strategy.model.state_dict()
    # task 0's weights untouched (the model's other state now also knows task 1)
    assert all(torch.equal(before[k], after[k]) for k in before if k != "hypercl_state")


def test_emb_lr_puts_every_task_embedding_in_its_own_group_at_its_rate():
    def snapshot(strategy):
        return {n: p.detach().clone() for n, p in strategy.model.named_parameters()}

    before, after = Probe("before_training_iteration", snapshot), Probe("after_training_iteration", snapshot)
    strategy = small_hypercl(lr=1e-3, emb_lr=0.05, beta=0.0, lookahead=False, plugins=[before, after, StepBudget(1)])
    strategy.train(conflicting_stream(n_tasks=2).train_stream)
    groups = strategy.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    model = strategy.model
    assert [id(p) for p in groups[1]["params"]] == [id(model.task_embs["0"]), id(model.task_embs["1"])]
    trained = {id(p) for p in groups[0]["params"] if p.requires_grad}  # the target's own copies are frozen
    assert trained == {id(p) for p in model.hnet.parameters()}
    for exp in (0, 1):  # Adam's first step moves each parameter by its rate (times sign(grad))
        step = {n: (after.seen[exp][0][n] - before.seen[exp][0][n]).abs() for n in before.seen[exp][0]}
        emb = step[f"task_embs.{exp}"]
        assert torch.allclose(emb[emb > 0], torch.tensor(0.05), rtol=1e-3) and (emb > 0).sum() >= 6
        hnet = torch.cat([s.flatten() for n, s in step.items() if n.startswith("hnet.")])
        assert hnet.max() <= 1e-3 * 1.001 and hnet.max() > 0.9e-3
    with pytest.raises(ValueError, match="emb_lr must be a positive learning rate"):
        small_hypercl(emb_lr=0.0)


def test_emb_lr_optimizer_resumes_from_a_checkpoint_with_its_groups(tmp_path):
    from hypercl.checkpoint import Checkpoint, load_checkpoint, restore

    bm = conflicting_stream(n_tasks=2)
    first = small_hypercl(emb_lr=0.02, plugins=[StepBudget(3), Checkpoint(tmp_path / "c.pt")])
    first.train(bm.train_stream[0])
    again = small_hypercl(emb_lr=0.02, plugins=[StepBudget(3)])
    assert restore(again, load_checkpoint(tmp_path / "c.pt"), bm.train_stream) == 1
    assert [g["lr"] for g in again.optimizer.param_groups] == [5e-3, 0.02]
    saved, loaded = first.optimizer.state_dict()["state"], again.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k]["exp_avg"], loaded[k]["exp_avg"]) for k in saved)
    again.train(bm.train_stream[1])
    assert len(again.optimizer.param_groups[1]["params"]) == 2


@pytest.mark.parametrize("emb_init", ["random", "previous"])
def test_a_new_task_embedding_starts_random_or_where_the_last_task_is(emb_init):
    starts = Probe("before_training_exp", lambda s: s.model.task_embs[str(s.experience.task_label)].detach().clone())
    strategy = small_hypercl(emb_init=emb_init, plugins=[starts, StepBudget(5)])
    bm = conflicting_stream(n_tasks=3)
    model = strategy.model
    strategy.train(bm.train_stream[0])
    trained0 = model.task_embs["0"].detach().clone()
    assert torch.equal(starts.seen[0][0], model.initial_embedding(0) if emb_init == "random" else starts.seen[0][0])
    untrained = model.embeddings([1], untrained=True)[0]  # what evaluating task 1 now runs
    strategy.eval(bm.test_stream[:2])
    assert model.tasks == [0]  # evaluating the untrained task created nothing
    strategy.train(bm.train_stream[1])
    start1 = starts.seen[1][0]
    assert torch.equal(untrained, start1)  # an untrained task evaluates with where it will start
    if emb_init == "previous":
        assert torch.equal(start1, trained0)
        assert torch.equal(model.initial_embedding(2), model.task_embs["1"].detach())
    else:
        assert (start1 - trained0).abs().max() > 0.1  # an N(0, 1) draw of its own
        assert torch.equal(model.initial_embedding(2), model.initial_embedding(2)) and not torch.equal(
            model.initial_embedding(2), model.task_embs["1"].detach())
    assert model.task_embs["1"] is not model.task_embs["0"]
    assert torch.equal(model.task_embs["0"].detach(), trained0)  # training task 1 left task 0's alone
    with pytest.raises(ValueError, match="emb_init must be 'random' or 'previous'"):
        small_hypercl(emb_init="last")


def test_shared_parameters_train_during_the_first_tasks_only_with_freeze_shared_after():
    strategy = small_hypercl(generate=["net.3.*"], freeze_shared_after=1, lookahead=False, plugins=[StepBudget(5)])
    bm = conflicting_stream(n_tasks=3)
    first = strategy.model.target.net[1]
    before = [p.detach().clone() for p in first.parameters()]
    strategy.train(bm.train_stream[0])
    after0 = [p.detach().clone() for p in first.parameters()]
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(after0, before))  # task 0 trained them
    for exp in bm.train_stream[1:]:
        strategy.train(exp)
        assert not any(p.requires_grad for p in first.parameters())
        assert all(torch.equal(p, a) for p, a in zip(first.parameters(), after0))  # frozen since task 1
    assert strategy.model.target.net[3].weight.requires_grad is False  # generated: never the target's own
    with pytest.raises(ValueError, match="freeze_shared_after must be a number of tasks"):
        small_hypercl(generate=["net.3.*"], freeze_shared_after=True)
    with pytest.raises(ValueError, match="freeze_shared_after must be a number of tasks"):
        small_hypercl(generate=["net.3.*"], freeze_shared_after=1, freeze_shared=True)
    with pytest.raises(ValueError, match="generates all of them. Choose some with generate="):
        small_hypercl(freeze_shared_after=1)
