"""A target network whose weights come from a task-conditioned hypernetwork."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from avalanche.benchmarks.scenarios import CLExperience
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
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
    brings a new task label. Its initial value, N(0, 1) as in the paper, is drawn from a
    generator seeded by the model's ``emb_seed`` (drawn from torch's global generator when
    the model is built) and the task label: it is the same whenever the task arrives, and
    creating it leaves the global random state alone. With ``emb_init="previous"`` every
    task after the first starts instead from the embedding the most recent task has when
    the new one arrives (the authors' ``init_with_prev_emb``): training starts from the
    weights of the last task and what they learnt carries over.

    **Untrained tasks.** In evaluation, a task that has not been trained yet runs the
    network that its training will start from: the weights generated from its initial
    embedding (:meth:`initial_embedding`), the target's initial running statistics, and all
    outputs (no class is masked, as none is known). Its accuracy is what an untrained head
    of a multi-head model gives, and Avalanche's forward-transfer metrics compare against
    it. Nothing is created for it: evaluating untrained tasks does not change training. In
    the domain and class scenarios the inferred task is one of the trained ones; before the
    first experience, ``"domain"`` runs the initial network of experience 0 and ``"class"``
    outputs a uniform distribution over the classes evaluation has seen.

    **Saving and loading.** ``state_dict()`` holds everything: the hypernetwork, the task
    embeddings, the per-task statistics, fitted task inference, each task's classes, and a
    description of the target and hypernetwork. ``load_state_dict`` into a freshly built
    model with the same target and configuration recreates the tasks it finds and then
    evaluates identically; a state dict from another target or configuration is refused
    with a message that names what differs.

    Args:
        target: the network to generate weights for.
        hnet: hypernetwork architecture and init.
        generate: which target parameters to generate (see :data:`~hypercl.layout.Selection`);
            ``None`` generates all of them.
        freeze_shared: freeze the target parameters that are not generated.
        freeze_shared_after: train the parameters that are not generated during the first
            ``freeze_shared_after`` tasks only, then freeze them (e.g. ``1``: the first task
            shapes them, later tasks use them as they are, so their change cannot make an
            earlier task forget). ``None``: they stay trainable unless ``freeze_shared``.
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
        emb_init: where a new task's embedding starts: ``"random"`` (N(0, 1), the paper's)
            or ``"previous"`` (the most recent task's embedding; the first task's is random).
    """

    def __init__(
        self,
        target: nn.Module,
        *,
        hnet: HyperNetConfig | None = None,
        generate: Selection = None,
        freeze_shared: bool = False,
        freeze_shared_after: int | None = None,
        mask_unseen_classes: bool = True,
        mask_value: float = -1000.0,
        scenario: Literal["task", "domain", "class"] = "task",
        inference: str | TaskInference | Sequence[str | TaskInference] = "mahalanobis",
        task_stats: bool = True,
        emb_init: Literal["random", "previous"] = "random",
    ) -> None:
        super().__init__()
        if emb_init not in ("random", "previous"):
            raise ValueError(f"emb_init must be 'random' or 'previous', got {emb_init!r}.")
        self.emb_init = emb_init
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
        if freeze_shared_after is not None:
            count = isinstance(freeze_shared_after, int) and not isinstance(freeze_shared_after, bool)
            if freeze_shared or not count or freeze_shared_after < 0:
                raise ValueError(
                    "freeze_shared_after must be a number of tasks (0 or more) with freeze_shared=False, "
                    f"got freeze_shared_after={freeze_shared_after!r}, freeze_shared={freeze_shared!r}; "
                    "freeze_shared=True freezes the shared parameters from the start."
                )
            if generated == set(params):
                raise ValueError(
                    "freeze_shared_after needs parameters that are not generated; this model generates "
                    "all of them. Choose some with generate=."
                )
        self.freeze_shared_after = freeze_shared_after
        self._shared = [name for name in params if name not in generated and not freeze_shared]
        self.task_embs = nn.ParameterDict()
        self.emb_seed = int(torch.randint(0, 2**62, ()).item())
        """Seeds the task embeddings' initial values (see :meth:`initial_embedding`)."""
        self._initial_embs: dict[tuple[int, torch.device], Tensor] = {}
        self._eval_classes = 0
        """One more than the largest class id evaluation has seen (class scenario widths)."""
        self._task_experience: dict[int, int] = {}
        """The experience that first trained each task (to warn when another brings it again)."""
        self._warned: set[int] = set()
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
        """Create the embedding of ``task`` (its :meth:`initial_embedding`) if it is new."""
        if str(task) in self.task_embs:
            return
        self.task_embs[str(task)] = nn.Parameter(self.initial_embedding(task).clone())
        if self.stat_names:
            buffers = dict(self.target.named_buffers())
            self.task_stats[str(task)] = _Buffers({n: buffers[n].clone() for n in self.stat_names})

    def initial_embedding(self, task: int) -> Tensor:
        """The value ``task``'s embedding starts training from: N(0, 1) (as in the paper), drawn
        from a generator seeded by ``emb_seed`` and ``task``, so the same on every device and
        whenever it is asked for; with ``emb_init="previous"``, once a task exists, the most
        recent task's embedding as it is now. Untrained tasks are evaluated with it."""
        if self.emb_init == "previous" and self.task_embs and str(task) not in self.task_embs:
            return self.task_embs[str(self.tasks[-1])].detach()
        ref = self.hnet.chunk_embs
        key = (int(task), ref.device)
        if key not in self._initial_embs:
            g = torch.Generator().manual_seed(_mix(self.emb_seed, int(task)))
            emb = torch.randn(self.hnet.config.task_emb_dim, generator=g)
            self._initial_embs[key] = emb.to(device=ref.device, dtype=ref.dtype)
        return self._initial_embs[key]

    def stats(self, task: int, *, untrained: bool = False) -> dict[str, Tensor]:
        """The running statistics ``task``'s forward passes use, keyed by buffer name (empty
        without ``task_stats`` or normalisation layers). ``untrained``: a task never trained
        gets the target's own (initial) statistics instead of an error."""
        if not self.stat_names:
            return {}
        if str(task) not in self.task_stats:
            if untrained:
                buffers = dict(self.target.named_buffers())
                return {n: buffers[n] for n in self.stat_names}
            self.embeddings([task])  # raises the message for a task that was never trained
        return self.task_stats[str(task)].as_dict()

    def functional_params(self, task: int, flat: Tensor | None = None, *, untrained: bool = False) -> dict[str, Tensor]:
        """What ``functional_call(self.target, ...)`` needs to run ``task``: its generated
        weights (from ``flat``, else a fresh hypernetwork pass) and its running statistics."""
        weights = self.generate(task) if flat is None else self.layout.unflatten(flat)
        return weights | self.stats(task, untrained=untrained)

    def embeddings(self, tasks: Sequence[int], *, untrained: bool = False) -> Tensor:
        """Stacked embeddings ``(len(tasks), task_emb_dim)``. ``untrained``: a task never
        trained gets its :meth:`initial_embedding` (a constant) instead of an error.

        Raises:
            ValueError: a task has no embedding, i.e. was never trained (without ``untrained``).
        """
        missing = sorted({t for t in tasks if str(t) not in self.task_embs})
        if missing and not untrained:
            raise ValueError(
                f"No task embedding for task label(s) {missing}: this model has been trained "
                f"on task labels {self.tasks} only. In evaluation mode (model.eval(), as in "
                "strategy.eval) an untrained task runs the network its training will start "
                "from; in training mode only trained tasks exist."
            )
        return torch.stack([
            self.task_embs[str(t)] if str(t) in self.task_embs else self.initial_embedding(t) for t in tasks
        ])  # fmt: skip

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

    # ------------------------------------------------------------ state dict
    def describe(self) -> dict[str, Any]:
        """What a state dict must have been saved from to load into this model: the target's
        parameters and buffers (names, shapes), what is generated, the hypernetwork's
        configuration and the scenario."""
        cfg = self.hnet.config
        return {
            "target": {n: list(t.shape) for n, t in (*self.target.named_parameters(), *self.target.named_buffers())},
            "generate": list(self.layout.names),
            "hnet": {
                "hidden": list(cfg.hidden), "activation": cfg.activation.__name__, "chunk_size": self.hnet.chunk_size,
                "task_emb_dim": cfg.task_emb_dim, "chunk_emb_dim": cfg.chunk_emb_dim, "init": cfg.init,
            },  # fmt: skip
            "scenario": self.scenario,
            "inference": [m.name for m in self.inference],
            "task_stats": list(self.stat_names),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "model": self.describe(),
            "emb_seed": self.emb_seed,
            "task_classes": {str(t): sorted(c) for t, c in self._task_classes.items()},
            "task_experience": {str(t): e for t, e in self._task_experience.items()},
            "known_train_tasks_labels": sorted(self.known_train_tasks_labels),
            "max_class_label": self.max_class_label,
            "active_task": self.active_task,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.emb_seed = int(state["emb_seed"])
        self._initial_embs.clear()
        self._task_classes = {int(t): frozenset(cs) for t, cs in state["task_classes"].items()}
        self._task_experience = {int(t): e for t, e in state["task_experience"].items()}
        self.known_train_tasks_labels = set(state["known_train_tasks_labels"])
        self.max_class_label = int(state["max_class_label"])
        self.active_task = state["active_task"]
        self._mask_cache.clear()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # What is not a tensor (each task's classes, the embeddings' seed, what the model is),
        # as JSON bytes in a tensor: every value of the state dict stays a tensor.
        data = json.dumps(self._state()).encode()
        destination[prefix + STATE_KEY] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        # Runs before the submodules load: check that the state fits, then make room for its
        # tasks (embeddings, per-task statistics), which a freshly built model does not have.
        raw = state_dict.get(prefix + STATE_KEY)
        state = None if raw is None else json.loads(bytes(raw.cpu().numpy()).decode())
        if state is not None:
            _check_same_model(state["model"], self.describe())
        emb_prefix, stats_prefix = prefix + "task_embs.", prefix + "task_stats."
        for key, value in state_dict.items():
            if key.startswith(emb_prefix) and key[len(emb_prefix):] not in self.task_embs:
                ref = self.hnet.chunk_embs
                self.task_embs[key[len(emb_prefix):]] = nn.Parameter(
                    torch.empty(value.shape, device=ref.device, dtype=ref.dtype), requires_grad=False
                )
            elif key.startswith(stats_prefix) and self.stat_names:
                task = key[len(stats_prefix):].split(".")[0]
                if task not in self.task_stats:
                    buffers = dict(self.target.named_buffers())
                    self.task_stats[task] = _Buffers({n: buffers[n].clone() for n in self.stat_names})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + STATE_KEY in unexpected_keys:
            unexpected_keys.remove(prefix + STATE_KEY)
        if state is not None:  # absent from state dicts saved before hypercl 0.2: derived from the data
            self._set_state(state)

    # ------------------------------------------------------------ avalanche
    def adaptation(self, experience: CLExperience) -> None:
        """Training: add embeddings for new task labels and record each task's classes.
        Evaluation: only note the largest class id (the class scenario's output width)."""
        if not self.training:
            classes = getattr(experience, "classes_in_this_experience", None)
            if classes:
                self._eval_classes = max(self._eval_classes, max(int(c) for c in classes) + 1)
            return
        if self.scenario != "task":
            task = _stream_index(experience)
            classes = frozenset(int(c) for c in experience.classes_in_this_experience)
            self.add_task(task)
            self._task_classes[task] = classes
            self.active_task = task
            self.max_class_label = max(self.max_class_label, max(classes) + 1)
            self._mask_cache.clear()
            self._freeze_shared_when_due()
            return
        online = isinstance(experience, OnlineCLExperience)  # a task's data comes in many pieces
        index = getattr(experience, "current_experience", None)
        for task, classes in _classes_per_task(experience).items():
            first = self._task_experience.setdefault(task, index)
            if first != index and not online and task not in self._warned:
                self._warned.add(task)
                warnings.warn(
                    f"Experience {index} brings task label {task}, which experience {first} "
                    "already trained: HyperCL goes on training that task's embedding, and no "
                    "regulariser keeps what it learnt there. This is what a stream without task "
                    "labels gives (every experience labelled 0). For such a stream use "
                    "HyperCL(scenario='class') (new classes in each experience) or "
                    "scenario='domain' (the same classes), which infer the task.",
                    stacklevel=2,
                )
            self.add_task(task)
            self._task_classes[task] = self._task_classes.get(task, frozenset()) | classes
            self.known_train_tasks_labels.add(task)
            self.max_class_label = max(self.max_class_label, max(classes) + 1)
        self._mask_cache.clear()
        self._freeze_shared_when_due()

    def _freeze_shared_when_due(self) -> None:
        """Shared parameters train while the model has at most ``freeze_shared_after`` tasks."""
        if self.freeze_shared_after is not None:
            params = dict(self.target.named_parameters())
            for name in self._shared:
                params[name].requires_grad_(len(self.task_embs) <= self.freeze_shared_after)

    def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor:
        """Target outputs for a mini-batch whose samples may belong to different tasks.

        The weights of all tasks in the batch come from one hypernetwork pass. In the
        domain and class scenarios ``task_labels`` is ignored (see ``scenario``). In
        evaluation mode a task not trained yet runs the network its training starts from.
        """
        if self.scenario != "task":
            return self._forward_agnostic(x)
        if task_labels is None:
            raise ValueError(_NO_TASK_LABELS)
        untrained = not self.training
        if isinstance(task_labels, int):
            return self.run_weights(x, self.hnet(self.embeddings([task_labels], untrained=untrained))[0], task_labels)
        groups = task_groups(task_labels)
        if groups is None:  # not from a DeviceLoader: read the tasks off the labels (a device sync)
            tasks, inverse = torch.unique(task_labels, return_inverse=True)
            order = inverse.argsort(stable=True)
            sizes = torch.bincount(inverse, minlength=len(tasks))
            groups = TaskGroups(tuple(tasks.tolist()), tuple(sizes.tolist()), order, order.argsort())
        tasks = list(groups.tasks)
        flat = self.hnet(self.embeddings(tasks, untrained=untrained))  # (U, P)
        if len(tasks) == 1:
            return self.run_weights(x, flat[0], tasks[0])
        parts = x[groups.order].split(groups.sizes)  # grouped by task, sizes known on the host
        out = torch.cat([self.run_weights(xi, flat[i], task) for i, (xi, task) in enumerate(zip(parts, tasks))])
        return out[groups.restore]

    def tasks_of(self, experience: CLExperience) -> set[int]:
        """The task(s) a training experience trains: its task labels, or in the domain and
        class scenarios its index in the stream."""
        if self.scenario != "task":
            return {_stream_index(experience)}
        return set(_classes_per_task(experience))

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
        elif not self.tasks:  # before the first experience: nothing to infer from
            if self.scenario == "class":
                width = max(self._eval_classes, 1)
                return torch.full((len(x), width), -math.log(width), device=x.device, dtype=self.hnet.chunk_embs.dtype)
            return self.run_weights(x, self.hnet(self.embeddings([0], untrained=True))[0], 0)
        else:
            tasks, logits = self.infer(x)
            self.last_inferred = tasks
        return logits if self.scenario == "domain" else self._class_outputs(logits, tasks)

    def _class_outputs(self, logits: Tensor, tasks: Tensor) -> Tensor:
        """Task-local logits ``(B, C)`` placed at the global class ids of each sample's task:
        in training over the classes trained so far, in evaluation over those and every class
        evaluation has seen (so that any evaluated label has a column)."""
        n = self.max_class_label
        idx = self._class_table(logits.shape[1], logits.device)[tasks]  # (B, C); n = no class
        if self.training:  # the task's own classes only: the same loss as task-incremental training
            return logits.new_full((len(logits), n + 1), self.mask_value).scatter(1, idx, logits)[:, :n]
        width = max(n, self._eval_classes)
        eps = 1e-3
        probs = (1 - eps) * logits.masked_fill(idx == n, float("-inf")).softmax(1) + eps / width
        idx = idx.masked_fill(idx == n, width)
        return logits.new_full((len(logits), width + 1), eps / width).scatter(1, idx, probs)[:, :width].log()

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
        out = functional_call(self.target, self.functional_params(task, flat, untrained=not self.training), (x,))
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
    "HyperCL (scenario='task') generates weights per task and needs the task label of every "
    "sample. Use a benchmark with task labels (e.g. SplitMNIST(..., return_task_id=True)), or "
    "call model(x, task_labels). For a stream without task labels, build HyperCL with "
    "scenario='class' (each experience brings new classes) or scenario='domain' (the same "
    "classes), which infer the task of every input."
)

#: The state-dict key of what a HyperCLModel keeps besides tensors (JSON bytes), and its version.
STATE_KEY = "hypercl_state"
STATE_VERSION = 1


def _mix(seed: int, task: int) -> int:
    """A 63-bit generator seed from the model's seed and a task label (splitmix64)."""
    z = (seed + 0x9E3779B97F4A7C15 * (task + 1)) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


def _check_same_model(saved: dict[str, Any], mine: dict[str, Any]) -> None:
    """Raise one message naming every difference between two :meth:`HyperCLModel.describe`."""
    diffs = []
    for key in sorted(set(saved) | set(mine)):
        a, b = saved.get(key), mine.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in [*a, *(k for k in b if k not in a)]:
                if a.get(k) != b.get(k):
                    diffs.append(f"{key}.{k}: saved {_show(a.get(k))}, this model {_show(b.get(k))}")
        else:
            diffs.append(f"{key}: saved {_show(a)}, this model {_show(b)}")
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ValueError(
            f"This state dict was saved from a HyperCLModel built differently: {shown}. Build the "
            "model with the same target, generate=, HyperNetConfig, scenario and inference as "
            "the one that saved it, then load it."
        )


def _show(value: Any) -> str:
    return "absent" if value is None else repr(value)


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


def _task_labels(experience: CLExperience) -> list[int]:
    """The experience's task labels, or its data's (online sub-experiences hide theirs)."""
    labels = getattr(experience, "task_labels", None)
    if labels is None:
        try:
            labels = experience.dataset.targets_task_labels
        except AttributeError:
            raise ValueError(_NO_TASK_LABELS) from None
    return list(dict.fromkeys(int(t) for t in labels))


def _classes_per_task(experience: CLExperience) -> dict[int, frozenset[int]]:
    task_labels = _task_labels(experience)
    if len(task_labels) == 1 and hasattr(experience, "classes_in_this_experience"):
        return {task_labels[0]: frozenset(int(c) for c in experience.classes_in_this_experience)}
    data = experience.dataset
    out: dict[int, set[int]] = {}
    for t, y in zip(data.targets_task_labels, data.targets):
        out.setdefault(int(t), set()).add(int(y))
    return {t: frozenset(c) for t, c in out.items()}


def _stream_index(experience: CLExperience) -> int:
    """The task a domain/class experience trains: its index in the stream (for an online
    sub-experience, the index of the experience it was split from)."""
    if isinstance(experience, OnlineCLExperience):
        if not experience.access_task_boundaries:
            raise ValueError(
                "HyperCL's domain and class scenarios learn one task per experience and need to "
                "know where an online stream's experiences begin and end: build it with "
                "split_online_stream(..., access_task_boundaries=True)."
            )
        experience = experience.origin_experience
    return int(experience.current_experience)
