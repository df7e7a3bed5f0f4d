"""Task-agnostic evaluation: task inference, domain and class scenarios through Avalanche."""

import pytest
import torch
from avalanche.benchmarks import tensors_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader

from hypercl import MLP, HyperCL, HyperCLModel, HyperNetConfig, StepBudget
from hypercl.inference import METHODS, EntropyInference, MahalanobisInference, make_inference, task_logits
from hypercl.metrics import task_inference_metrics

TINY_HNET = HyperNetConfig(hidden=(16,), chunk_size=100, task_emb_dim=8, chunk_emb_dim=8)


def blob_stream(scenario: str, n_tasks: int = 3, n: int = 200, dim: int = 8, seed: int = 0):
    """Each task: two Gaussian blobs in its own region of input space (so its identity is
    learnable from the inputs), labelled 0/1 (domain) or 2t, 2t+1 (class); task label 0."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(n_tasks, 2, dim, generator=g)
    y = torch.arange(n) % 2

    def draw(t):
        return centres[t, y] + torch.randn(n, dim, generator=g), y + (2 * t if scenario == "class" else 0)

    return tensors_benchmark(
        train_tensors=[draw(t) for t in range(n_tasks)],
        test_tensors=[draw(t) for t in range(n_tasks)],
        task_labels=[0] * n_tasks,
        complete_test_set_only=False,
    )


def inputs(exp, n: int | None = None) -> torch.Tensor:
    x, *_ = next(iter(DataLoader(exp.dataset, batch_size=len(exp.dataset))))
    return x[:n]


def train_agnostic(scenario: str, inference=tuple(METHODS), steps: int = 150):
    bm = blob_stream(scenario)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), *task_inference_metrics(), loggers=[])
    strategy = HyperCL(
        target=MLP(8, (32,), 2),
        hnet=TINY_HNET,
        lr=5e-3,
        beta=0.05,
        scenario=scenario,
        inference=list(inference),
        train_mb_size=32,
        eval_mb_size=256,
        evaluator=evaluator,
        plugins=[StepBudget(steps)],
    )
    for i, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        metrics = strategy.eval(bm.test_stream[: i + 1])
    return bm, strategy, metrics


@pytest.fixture(scope="module")
def class_run():
    torch.manual_seed(0)
    return train_agnostic("class")


def test_class_incremental_end_to_end_with_avalanche_metrics(class_run):
    bm, strategy, metrics = class_run
    # After 3 tasks of 2 classes: logits over the 6 classes seen, for Avalanche's metrics.
    x = inputs(bm.test_stream[2], 8)
    strategy.model.eval()
    out = strategy.model(x, torch.zeros(8, dtype=torch.long))
    assert out.shape == (8, 6)
    assert torch.allclose(out.exp().sum(1), torch.ones(8), atol=1e-5)  # log-probabilities
    assert metrics["TaskInference_Stream/eval_phase/test_stream"] > 0.95
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.95
    per_exp = [metrics[f"TaskInference_Exp/eval_phase/test_stream/Exp{j:03d}"] for j in range(3)]
    assert min(per_exp) > 0.9


def test_naive_single_head_forgets_where_hypercl_infers(class_run):
    bm, _, hypercl_metrics = class_run
    torch.manual_seed(0)
    model = MLP(8, (32,), 6)
    naive = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=5e-3),
        train_mb_size=32,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
        plugins=[StepBudget(150)],
    )
    for exp in bm.train_stream:
        naive.train(exp)
    naive_acc = naive.eval(bm.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert naive_acc < 0.5 < hypercl_metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]


def test_mahalanobis_infers_the_task_of_separated_tasks_where_prediction_scores_err(class_run):
    # Tasks in disjoint input regions: a density of each task's data tells them apart; the
    # scores of predictions (entropy, one-shot gradient) do not, since a network is also
    # sure of itself far from its training data.
    bm, strategy, _ = class_run
    model = strategy.model.eval()
    right = {}
    for k, method in enumerate(model.inference):
        with torch.no_grad():
            right[method.name] = [(model.infer(inputs(exp), k)[0] == j).float().mean().item()
                                  for j, exp in enumerate(bm.test_stream)]  # fmt: skip
    assert min(right["mahalanobis"]) > 0.95
    assert min(right["mahalanobis-hidden"]) > 0.9
    assert sum(right["entropy"]) / 3 > 0.6  # well above chance (1/3) ...
    assert min(right["entropy"]) < 0.95 and min(right["oneshot"]) < 0.95  # ... but not as sure


@pytest.mark.parametrize("method", list(METHODS))
def test_vectorised_scores_equal_a_per_sample_loop(class_run, method):
    bm, strategy, _ = class_run
    model = strategy.model.eval()
    inference = next(m for m in model.inference if m.name == method)
    x = torch.cat([inputs(exp, 5) for exp in bm.test_stream])
    with torch.no_grad():
        scores, logits = inference.scores(model, x, model.tasks)
        loop = [inference.scores(model, x[i : i + 1], model.tasks) for i in range(len(x))]
    assert scores.shape == (3, len(x)) and logits.shape == (3, len(x), 2)
    assert torch.allclose(scores, torch.cat([s for s, _ in loop], 1), atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits, torch.cat([lg for _, lg in loop], 1), atol=1e-5)


def test_task_logits_equal_each_task_run_with_its_own_label(class_run):
    _, strategy, _ = class_run
    model = strategy.model
    x = torch.randn(10, 8)
    with torch.no_grad():
        batched = task_logits(model, x, model.tasks)
        for t in model.tasks:
            own = torch.func.functional_call(model.target, model.generate(t), (x,))
            assert torch.allclose(batched[t], own, atol=1e-6)


def fit_weights(model: HyperCLModel, weights: dict[int, dict[str, torch.Tensor]], steps: int = 800) -> None:
    """Regress the hypernetwork onto chosen weights for each task."""
    for t in weights:
        model.add_task(t)
    opt = torch.optim.Adam([*model.hnet.parameters(), *model.task_embs.values()], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(((model.generate(t)[n] - w) ** 2).sum() for t, ws in weights.items() for n, w in ws.items())
        loss.backward()
        opt.step()


def test_entropy_picks_the_task_that_is_sure_on_a_constructed_case():
    # Task 0's network reads only x0, task 1's only x1: each is sure only where its input is large.
    model = HyperCLModel(MLP(2, (), 2), hnet=TINY_HNET, scenario="domain", inference="entropy")
    sharp = 10 * torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    fit_weights(model, {0: {"net.1.weight": sharp, "net.1.bias": torch.zeros(2)},
                        1: {"net.1.weight": sharp.flip(1), "net.1.bias": torch.zeros(2)}})  # fmt: skip
    x = torch.tensor([[3.0, 0.01], [-2.0, 0.02], [0.01, 3.0], [-0.02, -2.0]])
    model.eval()
    with torch.no_grad():
        tasks, logits = model.infer(x)
        out = model(x)
    assert tasks.tolist() == [0, 0, 1, 1]
    assert out.argmax(1).tolist() == [0, 1, 0, 1]  # each input classified by its own task's network
    assert torch.equal(out, logits)  # domain scenario: the inferred task's logits, unchanged


def test_temperature_reorders_tasks_with_more_than_two_classes():
    logits = torch.tensor([[[4.0, 4.0, -10.0]], [[2.0, 0.0, 0.0]]])  # (T=2, B=1, C=3)

    class Fixed(EntropyInference):
        def scores(self, model, x, tasks):
            from hypercl.inference import entropy

            return -entropy(logits / self.temperature), logits

    cold, warm = Fixed(temperature=0.5), Fixed(temperature=5.0)
    assert cold.scores(None, None, None)[0].argmax(0).item() == 1  # task 1 surer when sharpened
    assert warm.scores(None, None, None)[0].argmax(0).item() == 0  # task 0 surer when softened


def test_domain_scenario_outputs_the_shared_label_space():
    torch.manual_seed(0)
    bm, strategy, metrics = train_agnostic("domain", inference=("mahalanobis",), steps=100)
    strategy.model.eval()
    assert strategy.model(inputs(bm.test_stream[0], 4)).shape == (4, 2)
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.9


def test_mahalanobis_statistics_follow_the_model_state_dict(class_run):
    _, strategy, _ = class_run
    model = strategy.model
    keys = [k for k in model.state_dict() if k.startswith("inference.0.")]
    assert sorted(keys) == sorted(f"inference.0.{kind}_{t}" for kind in ("means", "precision") for t in range(3))
    assert model.state_dict()["inference.0.means_0"].shape == (2, 8)  # 2 classes x 8 input features


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="scenario must be one of"):
        HyperCLModel(MLP(4, (8,), 2), hnet=TINY_HNET, scenario="classes")
    with pytest.raises(ValueError, match="Unknown task-inference method 'entropie'; choose from mahalanobis, mahalanobis-hidden, entropy"):
        make_inference("entropie")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        EntropyInference(temperature=0)
    model = HyperCLModel(MLP(4, (8,), 2), hnet=TINY_HNET, scenario="class", inference=MahalanobisInference())
    model.add_task(0)
    model.eval()
    with pytest.raises(ValueError, match="no statistics for task 0"):
        model.infer(torch.randn(3, 4))
    with pytest.raises(ValueError, match="features must be 'input' or 'hidden'"):
        MahalanobisInference(features="pixels")
    hidden = MahalanobisInference(features="hidden")
    single_layer = HyperCLModel(MLP(4, (), 2), hnet=TINY_HNET, scenario="class", inference=hidden)
    single_layer.add_task(0)
    with pytest.raises(ValueError, match="Use EntropyInference for single-layer targets"):
        single_layer.inference[0].fit_task(single_layer, 0, [(torch.randn(3, 4), torch.zeros(3))])
