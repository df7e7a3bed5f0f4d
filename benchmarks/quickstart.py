import os

import torch
from avalanche.benchmarks.classic import SplitMNIST
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin

from hypercl import MLP, HyperCL, HyperNetConfig, StepBudget
from hypercl.data import DeviceData

torch.manual_seed(0)
benchmark = SplitMNIST(
    n_experiences=5,
    return_task_id=True,  # task-incremental: every sample carries its task label
    class_ids_from_zero_in_each_exp=True,  # labels 0/1 in every task, for a 2-output target
    fixed_class_order=list(range(10)),
    dataset_root=os.environ.get("HYPERCL_DATA_ROOT"),  # None: Avalanche's folder, downloads if online
)
evaluator = EvaluationPlugin(
    accuracy_metrics(experience=True, stream=True),
    forgetting_metrics(experience=True, stream=True),
    bwt_metrics(experience=True, stream=True),
    loggers=[],  # add avalanche.logging.InteractiveLogger() to watch progress
)
strategy = HyperCL(
    target=MLP(784, (400, 400), 2),  # the paper's Split MNIST target network
    hnet=HyperNetConfig(hidden=(10, 10), chunk_size=42000, task_emb_dim=96, chunk_emb_dim=96),
    beta=0.05,  # the paper's 0.01 suits its 2000 steps per task; short runs need more
    train_mb_size=128,
    eval_mb_size=1000,
    evaluator=evaluator,
    plugins=[StepBudget(200), DeviceData()],  # 200 steps per task (the paper trains 2000); batches from tensors
)
print(f"hypernetwork / target parameters: {strategy.model.compression_ratio():.3f}")

results = []
for experience in benchmark.train_stream:  # Avalanche's getting-started loop
    strategy.train(experience)
    results.append(strategy.eval(benchmark.test_stream))  # the whole stream, untrained tasks too

metrics = results[-1]
accs = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] for t in range(5)]
print("accuracy per task:", "  ".join(f"{a:.4f}" for a in accs))
print(f"average {sum(accs) / len(accs):.4f}, BWT {metrics['StreamBWT/eval_phase/test_stream']:+.4f}")
