"""One generic name → factory registry, used for models, encoders, readers and segmenters.

Each entry carries metadata that tests and runners read (e.g. ``permutation_invariant``,
``mil_assumption``, ``tiny_kwargs``). ``create`` drops ``None`` kwargs, as timm's ``create_model`` does,
so configs can pass "unset" values without overriding a factory's defaults.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from milkit.errors import MILKitError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    name: str
    factory: Callable[..., T]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of factories with metadata."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("abmil", permutation_invariant=True)``."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries and self._entries[key].factory is not fn:
                raise MILKitError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = RegistryEntry(key, fn, dict(meta))
            return fn

        return deco

    def add(self, name: str, factory: Callable[..., T], **meta: Any) -> None:
        """Register without a decorator (for variants built from a shared factory)."""
        self.register(name, **meta)(factory)

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = fnmatch.filter(self._entries, f"*{name.split('.')[0]}*")[:5]
            hint = f" (did you mean: {', '.join(close)})" if close else f" (known: {', '.join(sorted(self._entries))})"
            raise MILKitError(f"unknown {self.kind} '{name}'{hint}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return self.get(name).factory(**kwargs)

    def meta(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).meta)

    def names(self, pattern: str = "*", **meta_filter: Any) -> list[str]:
        out = []
        for key, entry in sorted(self._entries.items()):
            if not fnmatch.fnmatch(key, pattern):
                continue
            if all(entry.meta.get(k) == v for k, v in meta_filter.items()):
                out.append(key)
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
