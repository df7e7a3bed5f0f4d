"""Checkpoints of an Avalanche strategy, and resuming from one with the same result.

A checkpoint holds a strategy's whole state: the model's state dict (hypernetwork, chunk
and task embeddings, per-task batch-norm statistics, fitted task inference), the
optimizer's, each plugin's (:mod:`hypercl.plugin_states`: the regulariser's targets,
EWC/SI/LwF/Replay state, the clock, the step budget), the random number generators, the
position in the stream and whatever the caller keeps in ``extra`` (evaluation history).
Everything is tensors and plain values, written atomically and read back with
``torch.load(weights_only=True)``.

Usage (the benchmark runner does this with ``--resume``)::

    ckpt = Checkpoint("run.pt", every=500)       # also every 500 steps, not only per experience
    strategy = HyperCL(..., plugins=[ckpt])
    start = restore(strategy, load_checkpoint("run.pt"), stream) if os.path.exists("run.pt") else 0
    for exp in stream[start:]:
        strategy.train(exp)

Resuming gives bit-for-bit the run that was never interrupted (on CPU; on a GPU as far as
its kernels are deterministic, see ``torch.use_deterministic_algorithms``). A checkpoint
written in the middle of an experience is resumed by replaying the data loader up to the
step it was written at (loading, not training on, the batches before it) with the random
state of that epoch. What is not restored: loggers, training-phase metrics of the
interrupted experience, and periodic evaluation (``eval_every``) inside epochs skipped on
resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from hypercl.atomic import atomic_path
from hypercl.guards import StopOnNonFiniteLoss
from hypercl.plugin_states import state_handler
from hypercl.rng import rng_state, set_rng_state

FORMAT = "hypercl-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the strategy it is restored into."""


# ------------------------------------------------------------------------ strategy state
def _stateful(strategy) -> list:
    """``(plugin, how to save its state)`` for every plugin of ``strategy`` that keeps state."""
    return [(p, h) for p in strategy.plugins if (h := state_handler(p)) is not None]


def strategy_state(strategy) -> dict:
    """The strategy's model, optimizer and plugin states, as tensors and plain values."""
    plugins = [{"class": type(p).__name__, "state": h.get(p)} for p, h in _stateful(strategy)]
    return {
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "stop_training": bool(strategy._stop_training),
        "plugins": plugins,
    }


def _put_plugins(strategy, state: dict, *, static: bool) -> None:
    for (p, handler), saved in zip(_stateful(strategy), state["plugins"]):
        if handler.static == static:
            handler.put(p, saved["state"], strategy)


def _put_dynamic(strategy, state: dict) -> None:
    """Everything that changes from step to step: model, optimizer, per-step plugin state."""
    try:
        strategy.model.load_state_dict(state["model"])
    except ValueError as err:  # a HyperCLModel names what differs
        raise CheckpointError(f"The checkpoint's model does not fit this strategy's. {err}") from None
    except RuntimeError as err:
        problems = [line.strip() for line in str(err).splitlines()[1:]]
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise CheckpointError(
            f"The checkpoint's model does not fit this strategy's: {' '.join(problems[:2])}{more} Build "
            "the strategy with the settings the checkpoint was written with."
        ) from None
    _check_optimizer_shapes(strategy.optimizer, state["optimizer"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    _put_plugins(strategy, state, static=False)
    strategy._stop_training = state["stop_training"]


def _check_optimizer_shapes(optimizer, saved: dict) -> None:
    """``Optimizer.load_state_dict`` does not compare shapes; a mismatch would fail later, inside
    a step. Checkpoints of hypercl 0.1 kept the hypernetwork's last layer (and Adam's moments for
    it) tall, where it is now stored wide."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    for i, p in zip(ids, params):
        for name, value in saved["state"].get(i, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                raise CheckpointError(
                    f"The checkpoint's optimizer state {name!r} has shape {tuple(value.shape)} for a parameter "
                    f"of shape {tuple(p.shape)}: it was written by another version of hypercl (0.1 stored the "
                    "hypernetwork's last layer transposed). Resume it with that version, or pass --force "
                    "(hypercl-bench) to start the run over."
                )


# ------------------------------------------------------------------------ files
def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a reader sees the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``, checking what it is.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated, corrupt, or not a hypercl checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a bad file
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "It is truncated or corrupt: delete it to start that run over."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hypercl checkpoint (no '{FORMAT}' header).")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {ckpt.get('version')} checkpoint; this hypercl reads version {VERSION}."
        )
    return ckpt


# ------------------------------------------------------------------------ the plugin
class Checkpoint(SupervisedPlugin):
    """Save the strategy's state to ``path`` after every experience and, with ``every``,
    every ``every`` training steps (see the module docstring).

    Args:
        path: the checkpoint file (replaced atomically at every save). ``None`` saves nothing
            (for resuming only).
        every: also save every this many steps of an experience.
        at_experience_end: save at the end of every experience. A caller that evaluates after
            each experience and keeps the results in ``extra`` turns this off and calls
            :meth:`save` after evaluating.
        on_save: called with the position after every save (progress messages).

    ``extra`` (a dict, or a function returning one at each save) is saved with every
    checkpoint: keep the run's history there.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        every: int | None = None,
        at_experience_end: bool = True,
        on_save=None,
    ) -> None:
        super().__init__()
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 step (or None for experience ends only), got {every}.")
        self.path = None if path is None else Path(path)
        self.every, self.at_experience_end, self.on_save = every, at_experience_end, on_save
        self.extra: dict | Callable[[], dict] = {}
        self._exp_rng: dict | None = None
        self._epoch_rng: dict | None = None
        self._batch = 0
        self._in_experience = False
        self._pending = False
        self._resume: dict | None = None

    def save(self, strategy) -> None:
        """Save now: at the current step inside an experience, else after the last one."""
        if self.path is None:
            return
        for plugin in strategy.plugins:  # never keep a state past a non-finite loss
            if isinstance(plugin, StopOnNonFiniteLoss):
                plugin.check(strategy)
        clock, state = strategy.clock, strategy_state(strategy)
        if self._in_experience:
            position = {"experience": clock.train_exp_counter, "epoch": clock.train_exp_epochs,
                        "batch": self._batch, "step": clock.train_exp_iterations}  # fmt: skip
        else:
            position = {"experience": clock.train_exp_counter, "epoch": 0, "batch": 0, "step": 0}
        ckpt = {
            "format": FORMAT,
            "version": VERSION,
            "position": position,
            "strategy": state,
            "rng": rng_state(),
            "exp_rng": self._exp_rng if self._in_experience else None,
            "epoch_rng": self._epoch_rng if self._in_experience else None,
            "extra": self.extra() if callable(self.extra) else self.extra,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        save_checkpoint(self.path, ckpt)
        if self.on_save is not None:
            self.on_save(position)

    def _step_done(self, strategy) -> None:
        """Called by the data loader when the next batch is asked for: every plugin's hooks
        of the step before have run, so this is where a step's checkpoint is written."""
        if self.every and strategy.clock.train_exp_iterations % self.every == 0:
            self.save(strategy)

    # --------------------------------------------------------------- hooks
    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        # The first hook of an experience. A strategy trained on several experiences in one
        # train() call saves the previous one here, before anything of this one happens.
        self._save_pending(strategy)
        # Data loaders made from here on (Replay's) may draw from the random state when
        # built, so a resumed experience starts from the state its first run started from.
        if self._resume is not None:
            set_rng_state(self._resume["exp_rng"])
        self._exp_rng = rng_state()

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._in_experience = True

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if not isinstance(strategy.dataloader, _TrackedLoader):
            strategy.dataloader = _TrackedLoader(strategy.dataloader, self, strategy)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self._in_experience = False
        if self._resume is not None:
            raise CheckpointError(_never_reached(self._resume["position"]))
        # Not saved here: plugins after this one (Replay's buffer update, Avalanche's clock)
        # have yet to finish the experience.
        self._pending = self.at_experience_end

    def after_training(self, strategy, **kwargs) -> None:
        self._save_pending(strategy)

    def _save_pending(self, strategy) -> None:
        if self._pending:
            self._pending = False
            self.save(strategy)


class _TrackedLoader:
    """The training data loader, counting batches and keeping each epoch's random state; when
    resuming mid-experience, it replays the loader to the checkpoint's batch and puts the
    checkpoint's state back right before the next batch is drawn, where it was written."""

    def __init__(self, loader, plugin: Checkpoint, strategy) -> None:
        self.loader, self.plugin, self.strategy = loader, plugin, strategy

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):  # anything else (dataset, batch_size...) is the loader's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        plugin, strategy = self.plugin, self.strategy
        resume = plugin._resume
        if resume is not None:
            pos = resume["position"]
            if strategy.clock.train_exp_epochs < pos["epoch"]:
                return  # finished before the checkpoint: nothing to draw or train
            set_rng_state(resume["epoch_rng"])
        plugin._epoch_rng = rng_state()
        plugin._batch = 0
        it = iter(self.loader)
        if resume is not None:
            for _ in range(pos["batch"]):
                if next(it, None) is None:
                    raise CheckpointError(_never_reached(pos))
            plugin._batch = pos["batch"]
            _put_dynamic(strategy, resume["strategy"])
            set_rng_state(resume["rng"])
            plugin._resume = None
        for batch in it:
            plugin._batch += 1
            yield batch
            plugin._step_done(strategy)  # resumed when the loop wants the next batch


def _never_reached(pos: dict) -> str:
    return (
        f"The experience ended before the checkpoint's position (epoch {pos['epoch']}, batch "
        f"{pos['batch']}): the data or the number of steps differ from the run that wrote it."
    )


# ------------------------------------------------------------------------ resume
def restore(strategy, checkpoint: dict, train_stream) -> int:
    """Put ``checkpoint`` into a freshly built ``strategy``; return the index in
    ``train_stream`` of the experience to train next.

    ``strategy`` must be built as the one that wrote the checkpoint (same model, optimizer
    and plugins) and ``train_stream`` be the stream it trained on. Experiences before the
    checkpoint are not trained again: the model and optimizer are adapted to them (heads,
    task embeddings, the joint baseline's data) and their state loaded. For a checkpoint
    written inside an experience, the next ``strategy.train`` of that experience continues
    from the checkpoint's step.

    It sets the global random state to the checkpoint's: train right after it, without
    reseeding in between, for the run to go on exactly as it would have.
    """
    pos, state = checkpoint["position"], checkpoint["strategy"]
    ours = [type(p).__name__ for p, _ in _stateful(strategy)]
    theirs = [p["class"] for p in state["plugins"]]
    if ours != theirs:
        raise CheckpointError(
            f"The checkpoint was written by a strategy whose plugins with state are {theirs}; this "
            f"one has {ours}. Build the strategy with the same plugins to resume it."
        )
    done, mid = pos["experience"], pos["step"] > 0
    if done + mid > len(train_stream):
        raise CheckpointError(
            f"The checkpoint is at experience {done + mid} of a stream; this stream has {len(train_stream)}."
        )
    _adapt_to(strategy, train_stream[:done])
    _put_plugins(strategy, state, static=True)
    if not mid:
        _put_dynamic(strategy, state)
        set_rng_state(checkpoint["rng"])
        return done
    plugin = next((p for p in strategy.plugins if isinstance(p, Checkpoint)), None)
    if plugin is None:
        plugin = Checkpoint(None)
        strategy.plugins.append(plugin)
    plugin._resume = checkpoint
    return done


def _adapt_to(strategy, experiences) -> None:
    """Grow the model, the optimizer and the joint baseline's data as training on
    ``experiences`` did, without training."""
    model = strategy.model
    was_training = model.training
    model.train()  # models adapt only in training mode
    for exp in experiences:
        strategy.experience = exp
        strategy.train_dataset_adaptation()
        strategy.check_model_and_optimizer()
    model.train(was_training)
    strategy.experience, strategy.adapted_dataset = None, None
