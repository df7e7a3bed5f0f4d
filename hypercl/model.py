"""A target network whose weights come from a task-conditioned hypernetwork."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from avalanche.benchmarks.scenarios import CLExperience
from avalanche.models import MultiTaskModule
from torch import Tensor, nn
from torch.func import functional_call

from hypercl.data.loaders import TaskGroups, task_groups
from hypercl.hypernet import ChunkedHyperNetwork, HyperNetConfig
from hypercl.inference import TaskInference, make_inference
from hypercl.layout import Selection, WeightLayout

SCENARIOS = ("task", "domain", "class")


class HyperCLModel(MultiTaskModule):
    """Any ``nn.Module`` run with weights generated per task by a hypernetwork.

    The target is used as it is: its forward runs through
    :func:`torch.func.functional_call` with the generated tensors in place of its own
    parameters. Parameters that ``generate`` does not select stay ordinary shared
    parameters (trained, or frozen with ``freeze_shared=True``); the target's own
    copies of generated parameters are frozen, serve as the reference for the
    hypernetwork's init, and are never used in a forward pass.

    One task embedding per task label lives in ``task_embs`` (an ``nn.ParameterDict``
    keyed by ``str(task)``), created in :meth:`adaptation` when a training experience
    brings a new task label.

    Args:
        target: the network to generate weights for.
        hnet: hypernetwork architecture and init.
        generate: which target parameters to generate (see :data:`~hypercl.layout.Selection`);
            ``None`` generates all of them.
        freeze_shared: freeze the target parameters that are not generated.
        mask_unseen_classes: set the logits of classes a task never had in training to
            ``mask_value`` (multi-head behaviour, as Avalanche's ``MultiHeadClassifier``).
        mask_value: the value masked logits get.
        scenario: ``"task"`` (CL1): every sample's task label picks its embedding.
            ``"domain"`` (CL2) and ``"class"`` (CL3): task labels are ignored; in training the
            experience index is the task, in evaluation each input's task is inferred.
            ``"domain"`` outputs the inferred task's logits over the shared label space;
            ``"class"`` maps task ``t``'s ``k``-th output to the ``k``-th smallest class of
            experience ``t`` and outputs log-probabilities over every class seen so far:
            ``log((1 - eps) p(c | x, t*) + eps / N)`` with ``t*`` the inferred task and
            ``eps = 1e-3``, so the argmax is ``t*``'s prediction and the loss stays finite.
        inference: task-inference method(s) for ``"domain"``/``"class"``: a name from
            :data:`hypercl.inference.METHODS` or a :class:`~hypercl.inference.TaskInference`,
            or a sequence of them: the first decides the outputs, all are fitted (to compare
            them with :meth:`infer`).
        task_stats: keep the running statistics of the target's normalisation layers
            (batch norm) per task: each task's forward passes use and update its own copy,
            created fresh from the target's initial buffers when the task arrives, so
            evaluating an old task uses the statistics of its own data. ``False`` shares
            the target's buffers across tasks (they then follow the latest task).
    """

    def __init__(
        self,
        target: nn.Module,
        *,
        hnet: HyperNetConfig | None = None,
        generate: Selection = None,
        freeze_shared: bool = False,
        mask_unseen_classes: bool = True,
        mask_value: float = -1000.0,
        scenario: Literal["task", "domain", "class"] = "task",
        inference: str | TaskInference | Sequence[str | TaskInference] = "mahalanobis",
        task_stats: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(target, nn.Module):
            raise TypeError(
                f"target must be an nn.Module, the network whose weights are generated; got a "
                f"{type(target).__name__}. Pass the network itself, e.g. HyperCL(target=MLP(784, (100,), 10))."
            )
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}.")
        methods = [inference] if isinstance(inference, (str, TaskInference)) else list(inference)
        if not methods:
            raise ValueError("inference needs at least one method, e.g. 'mahalanobis' or 'entropy'.")
        self.scenario = scenario
        self.inference = nn.ModuleList(make_inference(m) for m in methods)
        self.inference_method = 0
        """Index into ``inference`` of the method whose choice decides the outputs."""
        self.active_task: int | None = None
        self.last_inferred: Tensor | None = None
        """Task inferred for each input of the last evaluation forward (domain/class)."""
        self.target = target
        self.layout = WeightLayout.from_module(target, generate)
        params = dict(target.named_parameters())
        ref = next(iter(params.values()))
        self.hnet = ChunkedHyperNetwork(
            self.layout,
            hnet or HyperNetConfig(),
            reference={n: params[n].detach() for n in self.layout.names},
            device=ref.device,
            dtype=ref.dtype,
        )
        generated = set(self.layout.names)
        for name, p in params.items():
            if name in generated or freeze_shared:
                p.requires_grad_(False)
        self.task_embs = nn.ParameterDict()
        self.stat_names = _running_stat_names(target) if task_stats else ()
        """Target buffers kept per task (batch-norm running statistics)."""
        self.task_stats = nn.ModuleDict()
        self.mask_unseen_classes = mask_unseen_classes
        self.mask_value = mask_value
        self._task_classes: dict[int, frozenset[int]] = {}
        self._mask_cache: dict[tuple[int, int, torch.device], Tensor] = {}

    # ----------------------------------------------------------------- tasks
    @property
    def tasks(self) -> list[int]:
        """Task labels that have an embedding, in the order they arrived."""
        return [int(k) for k in self.task_embs.keys()]

    def add_task(self, task: int) -> None:
        """Create the embedding of ``task`` (N(0, 1), as in the paper) if it is new."""
        if str(task) in self.task_embs:
            return
        ref = self.hnet.chunk_embs
        emb = torch.randn(self.hnet.config.task_emb_dim, device=ref.device, dtype=ref.dtype)
        self.task_embs[str(task)] = nn.Parameter(emb)
        if self.stat_names:
            buffers = dict(self.target.named_buffers())
            self.task_stats[str(task)] = _Buffers({n: buffers[n].clone() for n in self.stat_names})

    def stats(self, task: int) -> dict[str, Tensor]:
        """The running statistics ``task``'s forward passes use, keyed by buffer name (empty
        without ``task_stats`` or normalisation layers)."""
        if not self.stat_names:
            return {}
        if str(task) not in self.task_stats:
            self.embeddings([task])  # raises the message for a task that was never trained
        return self.task_stats[str(task)].as_dict()

    def functional_params(self, task: int, flat: Tensor | None = None) -> dict[str, Tensor]:
        """What ``functional_call(self.target, ...)`` needs to run ``task``: its generated
        weights (from ``flat``, else a fresh hypernetwork pass) and its running statistics."""
        weights = self.generate(task) if flat is None else self.layout.unflatten(flat)
        return weights | self.stats(task)

    def embeddings(self, tasks: Sequence[int]) -> Tensor:
        """Stacked embeddings ``(len(tasks), task_emb_dim)``.

        Raises:
            ValueError: a task has no embedding, i.e. was never trained.
        """
        missing = sorted({t for t in tasks if str(t) not in self.task_embs})
        if missing:
            raise ValueError(
                f"No task embedding for task label(s) {missing}: this model has been trained "
                f"on task labels {self.tasks} only, and an untrained embedding would give "
                "arbitrary weights. Evaluate only experiences whose task was trained, e.g. "
                "strategy.eval(benchmark.test_stream[: i + 1]) after training experience i."
            )
        return torch.stack([self.task_embs[str(t)] for t in tasks])

    def generate(self, task: int) -> dict[str, Tensor]:
        """The target's weights for ``task``, keyed by the target's parameter names."""
        return self.hnet.generate(self.embeddings([task])[0])

    def hnet_param_count(self) -> int:
        """Hypernetwork parameters, chunk and task embeddings included."""
        return sum(p.numel() for p in self.hnet.parameters()) + sum(
            p.numel() for p in self.task_embs.values()
        )

    def compression_ratio(self) -> float:
        """Hypernetwork parameters (embeddings included) / generated target parameters."""
        return self.hnet_param_count() / self.layout.n_weights

    # ------------------------------------------------------------ avalanche
    def adaptation(self, experience: CLExperience) -> None:
        """Add embeddings for new task labels and record each task's classes (training only)."""
        if not self.training:
            return
        if self.scenario != "task":
            task = int(experience.current_experience)
            classes = frozenset(int(c) for c in experience.classes_in_this_experience)
            self.add_task(task)
            self._task_classes[task] = classes
            self.active_task = task
            self.max_class_label = max(self.max_class_label, max(classes) + 1)
            self._mask_cache.clear()
            return
        if not hasattr(experience, "task_labels"):
            raise ValueError(_NO_TASK_LABELS)
        for task, classes in _classes_per_task(experience).items():
            self.add_task(task)
            self._task_classes[task] = self._task_classes.get(task, frozenset()) | classes
            self.known_train_tasks_labels.add(task)
            self.max_class_label = max(self.max_class_label, max(classes) + 1)
        self._mask_cache.clear()

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor:
        """Target outputs for a mini-batch whose samples may belong to different tasks.

        The weights of all tasks in the batch come from one hypernetwork pass. In the
        domain and class scenarios ``task_labels`` is ignored (see ``scenario``).
        """
        if self.scenario != "task":
            return self._forward_agnostic(x)
        if task_labels is None:
            raise ValueError(_NO_TASK_LABELS)
        if isinstance(task_labels, int):
            return self.run_weights(x, self.hnet(self.embeddings([task_labels]))[0], task_labels)
        groups = task_groups(task_labels)
        if groups is None:  # not from a DeviceLoader: read the tasks off the labels (a device sync)
            tasks, inverse = torch.unique(task_labels, return_inverse=True)
            order = inverse.argsort(stable=True)
            sizes = torch.bincount(inverse, minlength=len(tasks))
            groups = TaskGroups(tuple(tasks.tolist()), tuple(sizes.tolist()), order, order.argsort())
        tasks = list(groups.tasks)
        flat = self.hnet(self.embeddings(tasks))  # (U, P)
        if len(tasks) == 1:
            return self.run_weights(x, flat[0], tasks[0])
        parts = x[groups.order].split(groups.sizes)  # grouped by task, sizes known on the host
        out = torch.cat([self.run_weights(xi, flat[i], task) for i, (xi, task) in enumerate(zip(parts, tasks))])
        return out[groups.restore]

    def tasks_of(self, experience: CLExperience) -> set[int]:
        """The task(s) a training experience trains: its task labels, or in the domain and
        class scenarios its index in the stream."""
        if self.scenario != "task":
            return {int(experience.current_experience)}
        return {int(t) for t in experience.task_labels}

    def local_labels(self, task: int, y: Tensor) -> Tensor:
        """Class ids ``y`` of ``task`` as the positions of its outputs (identity unless "class")."""
        if self.scenario != "class":
            return y
        classes = torch.tensor(sorted(self._task_classes[task]), device=y.device)
        return torch.searchsorted(classes, y)

    def infer(self, x: Tensor, method: int | None = None) -> tuple[Tensor, Tensor]:
        """Inferred task of every input and the logits of that task's network, with
        ``self.inference[method]`` (default ``inference_method``): ``(tasks (B,), logits (B, C))``."""
        method = self.inference_method if method is None else method
        tasks = self.tasks
        if not tasks:
            raise ValueError("This model has not been trained on any task yet, so it cannot infer one.")
        scores, logits = self.inference[method].scores(self, x, tasks)  # (T, B), (T, B, C)
        best = scores.argmax(0)
        return torch.tensor(tasks, device=x.device)[best], logits[best, torch.arange(len(x), device=x.device)]

    def _forward_agnostic(self, x: Tensor) -> Tensor:
        if self.training:
            if self.active_task is None:
                raise ValueError(
                    "In the domain and class scenarios the task being trained is set by "
                    "adaptation(experience); train through an Avalanche strategy, or set "
                    "model.active_task."
                )
            logits = self.run_weights(x, self.hnet(self.embeddings([self.active_task]))[0], self.active_task)
            tasks = torch.full((len(x),), self.active_task, device=x.device)
        else:
            tasks, logits = self.infer(x)
            self.last_inferred = tasks
        return logits if self.scenario == "domain" else self._class_outputs(logits, tasks)

    def _class_outputs(self, logits: Tensor, tasks: Tensor) -> Tensor:
        """Task-local logits ``(B, C)`` placed at the global class ids of each sample's task."""
        n = self.max_class_label
        idx = self._class_table(logits.shape[1], logits.device)[tasks]  # (B, C); n = no class
        if self.training:  # the task's own classes only: the same loss as task-incremental training
            return logits.new_full((len(logits), n + 1), self.mask_value).scatter(1, idx, logits)[:, :n]
        eps = 1e-3
        probs = (1 - eps) * logits.masked_fill(idx == n, float("-inf")).softmax(1) + eps / n
        return logits.new_full((len(logits), n + 1), eps / n).scatter(1, idx, probs)[:, :n].log()

    def _class_table(self, n_out: int, device: torch.device) -> Tensor:
        """``table[t, k]``: the global class of task ``t``'s ``k``-th output (``max_class_label``
        where it has none)."""
        key = (-1, n_out, device)
        if key in self._mask_cache:
            return self._mask_cache[key]
        table = torch.full((max(self._task_classes) + 1, n_out), self.max_class_label, dtype=torch.long, device=device)
        for task, classes in self._task_classes.items():
            if len(classes) > n_out:
                raise ValueError(
                    f"Experience {task} has {len(classes)} classes but the target has {n_out} "
                    f"outputs. In the class scenario task t's k-th output is its k-th class: give "
                    f"the target at least {len(classes)} outputs."
                )
            table[task, : len(classes)] = torch.tensor(sorted(classes), device=device)
        self._mask_cache[key] = table
        return table

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self(x, int(task_label))

    def run_weights(self, x: Tensor, flat: Tensor, task: int) -> Tensor:
        """Target outputs for ``x`` with the flat weights ``flat`` (a row of ``self.hnet(...)``,
        from any embedding), task ``task``'s running statistics and its class mask."""
        out = functional_call(self.target, self.functional_params(task, flat), (x,))
        classes = self._task_classes.get(task)
        if out.dim() == 2 and classes and self.scenario == "task":
            if max(classes) >= out.shape[1]:
                raise ValueError(
                    f"Task {task} has class labels up to {max(classes)} but the target has "
                    f"{out.shape[1]} outputs. Give the target at least {max(classes) + 1} "
                    "outputs, or build the benchmark with class_ids_from_zero_in_each_exp=True."
                )
            if self.mask_unseen_classes:
                out = out.masked_fill(self._unseen_mask(task, out.shape[1], out.device), self.mask_value)
        return out

    def _unseen_mask(self, task: int, n_out: int, device: torch.device) -> Tensor:
        key = (task, n_out, device)
        if key not in self._mask_cache:
            mask = torch.ones(n_out, dtype=torch.bool, device=device)
            mask[list(self._task_classes[task])] = False
            self._mask_cache[key] = mask
        return self._mask_cache[key]


_NO_TASK_LABELS = (
    "HyperCL generates weights per task and needs the task label of every sample. "
    "Use a benchmark with task labels (e.g. SplitMNIST(..., return_task_id=True)), "
    "or call model(x, task_labels)."
)


class _Buffers(nn.Module):
    """One task's copy of the target's running statistics, as buffers (in the state dict)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = tuple(tensors)
        for name, t in tensors.items():
            self.register_buffer(name.replace(".", "__"), t)

    def as_dict(self) -> dict[str, Tensor]:
        return {n: getattr(self, n.replace(".", "__")) for n in self.names}


def _running_stat_names(target: nn.Module) -> tuple[str, ...]:
    """Buffers of the target's normalisation layers that track running statistics."""
    names = []
    for prefix, module in target.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            names += [f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False)]
    return tuple(names)


def _classes_per_task(experience: CLExperience) -> dict[int, frozenset[int]]:
    task_labels = list(dict.fromkeys(int(t) for t in experience.task_labels))
    if len(task_labels) == 1 and hasattr(experience, "classes_in_this_experience"):
        return {task_labels[0]: frozenset(int(c) for c in experience.classes_in_this_experience)}
    data = experience.dataset
    out: dict[int, set[int]] = {}
    for t, y in zip(data.targets_task_labels, data.targets):
        out.setdefault(int(t), set()).add(int(y))
    return {t: frozenset(c) for t, c in out.items()}
