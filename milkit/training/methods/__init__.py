"""Training methods (config group ``method/``)."""
from milkit.training.methods.base import StepContext, StepResult, TrainingMethod, model_losses, task_loss
from milkit.training.methods.supervised import Supervised

__all__ = ["StepContext", "StepResult", "Supervised", "TrainingMethod", "model_losses", "task_loss"]
