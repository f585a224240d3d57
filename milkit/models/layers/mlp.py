"""Per-instance projection blocks."""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["make_activation", "InstanceMLP"]

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
         "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}


def make_activation(name: str) -> nn.Module:
    """An activation by name; ``"name:arg"`` passes one float argument, e.g. ``"leaky_relu:0.2"``."""
    base, _, arg = name.partition(":")
    try:
        cls = _ACTS[base]
    except KeyError:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(_ACTS)})") from None
    if not arg:
        return cls()
    if base != "leaky_relu":  # the only one whose first argument is a float (its negative slope)
        raise ValueError(f"activation '{name}': '{base}' takes no argument")
    try:
        return cls(float(arg))
    except ValueError:
        raise ValueError(f"activation '{name}': the negative slope '{arg}' is not a number") from None


class InstanceMLP(nn.Sequential):
    """``[Linear → act → Dropout] × len(dims)`` applied to every instance: ``(B, N, D) → (B, N, dims[-1])``.

    ``dims=()`` gives the identity (the model then works on the input features directly); an int is one layer.
    """

    def __init__(self, in_dim: int, dims: Sequence[int] | int, act: str = "relu", dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        prev = in_dim
        for d in (dims,) if isinstance(dims, int) else dims:
            layers += [nn.Linear(prev, d), make_activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = d
        super().__init__(*layers)
        self.out_dim = prev
