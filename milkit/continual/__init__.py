"""Continual MIL: task sequences, continual methods (fine-tuning, LwF, EWC, LoRA, CoMEL), metrics and the runner."""
from milkit.continual.runner import run_continual

__all__ = ["run_continual"]
