"""Continual methods (config group ``method/``): finetune, lwf, ewc, lora, comel."""
from milkit.continual.methods.base import ContinualMethod, FineTune, TaskHeads
from milkit.continual.methods.lora import CoMEL, SequentialLoRA
from milkit.continual.methods.regularized import EWC, LwF

__all__ = ["CoMEL", "ContinualMethod", "EWC", "FineTune", "LwF", "SequentialLoRA", "TaskHeads"]
