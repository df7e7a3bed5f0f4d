"""HyperCL on real data: scikit-learn's digits and Split MNIST."""

import torch
from avalanche.benchmarks import tensors_benchmark
from helpers import accuracy_matrix, evaluator, final_and_bwt
from sklearn.datasets import load_digits

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget


def split_digits(seed: int = 0):
    """scikit-learn's 8x8 digits as 5 tasks of 2 classes, labels 0/1 within each task."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    test = torch.rand(len(y), generator=g) < 0.3
    train_tensors, test_tensors = [], []
    for t in range(5):
        for split, out in ((~test, train_tensors), (test, test_tensors)):
            keep = split & ((y == 2 * t) | (y == 2 * t + 1))
            out.append((x[keep], (y[keep] - 2 * t)))
    return tensors_benchmark(
        train_tensors=train_tensors,
        test_tensors=test_tensors,
        task_labels=list(range(5)),
        complete_test_set_only=False,
    )


def test_split_digits_learns_every_task_and_keeps_it():
    bm = split_digits()
    strategy = HyperCL(
        target=MLP(64, (100, 100), 2),
        hnet=HyperNetConfig(hidden=(10, 10), task_emb_dim=32, chunk_emb_dim=32),
        train_mb_size=32,
        evaluator=evaluator(),
        plugins=[StepBudget(150)],
    )
    acc = accuracy_matrix(strategy, bm)
    final, bwt = final_and_bwt(acc)
    print(f"digits: final {final:.4f}, bwt {bwt:+.4f}, ratio {strategy.model.compression_ratio():.2f}")
    assert final > 0.98
    assert bwt > -0.01



def test_split_mnist_a_few_hundred_steps(mnist):
    from avalanche.benchmarks.classic import SplitMNIST

    bm = SplitMNIST(
        n_experiences=5,
        return_task_id=True,
        class_ids_from_zero_in_each_exp=True,
        fixed_class_order=list(range(10)),
        dataset_root=mnist,
        seed=0,
    )
    strategy = HyperCL(
        target=MLP(784, (400, 400), 2),
        hnet=HyperNetConfig(chunk_size=42000),  # the paper's Split MNIST hypernetwork
        beta=0.05,  # a budget this short needs a stronger pull than the paper's 0.01
        train_mb_size=128,
        eval_mb_size=1000,
        evaluator=evaluator(),
        plugins=[StepBudget(60)],
    )
    acc = accuracy_matrix(strategy, bm)
    final, bwt = final_and_bwt(acc)
    print(f"split mnist, 5 x 60 steps: final {final:.4f}, bwt {bwt:+.4f}, per task {acc[-1]}")
    assert final > 0.975
    assert bwt > -0.015
