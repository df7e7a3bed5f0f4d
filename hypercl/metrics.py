"""Avalanche metrics for task-agnostic evaluation: how often HyperCL inferred the right task."""

from __future__ import annotations

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import Mean


class TaskInferenceAccuracy(PluginMetric[float]):
    """Fraction of evaluation inputs whose inferred task is their experience's task.

    Reads ``strategy.model.last_inferred`` after every evaluation iteration of a
    :class:`~hypercl.model.HyperCLModel` in the domain or class scenario; the true task of
    an input is the index of the experience it comes from (as in training).

    Emits ``TaskInference_Exp/eval_phase/<stream>/Exp<k>`` after each experience and
    ``TaskInference_Stream/eval_phase/<stream>`` after each evaluation.
    """

    def __init__(self, *, experience: bool = True, stream: bool = True) -> None:
        super().__init__()
        self.per_experience, self.per_stream = experience, stream
        self._exp, self._stream = Mean(), Mean()

    def reset(self) -> None:
        self._exp.reset()
        self._stream.reset()

    def result(self) -> float:
        return self._stream.result()

    def before_eval(self, strategy) -> None:
        self._stream.reset()

    def before_eval_exp(self, strategy) -> None:
        self._exp.reset()

    def after_eval_iteration(self, strategy) -> None:
        inferred = getattr(strategy.model, "last_inferred", None)
        if inferred is None:
            raise ValueError(
                "TaskInferenceAccuracy needs a HyperCL model in the domain or class scenario "
                "(HyperCL(..., scenario='class')); this model infers no tasks."
            )
        correct = (inferred == strategy.experience.current_experience).float()
        for mean in (self._exp, self._stream):
            mean.update(correct.mean().item(), len(correct))

    def after_eval_exp(self, strategy) -> list[MetricValue]:
        if not self.per_experience:
            return []
        exp = strategy.experience.current_experience
        name = f"TaskInference_Exp/eval_phase/{strategy.experience.origin_stream.name}_stream/Exp{exp:03d}"
        return [MetricValue(self, name, self._exp.result(), strategy.clock.train_iterations)]

    def after_eval(self, strategy) -> list[MetricValue]:
        if not self.per_stream:
            return []
        name = f"TaskInference_Stream/eval_phase/{strategy.experience.origin_stream.name}_stream"
        return [MetricValue(self, name, self._stream.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "TaskInference"


def task_inference_metrics(*, experience: bool = True, stream: bool = True) -> list[PluginMetric]:
    """For ``EvaluationPlugin(...)``: task-inference accuracy per experience and per stream."""
    return [TaskInferenceAccuracy(experience=experience, stream=stream)]
