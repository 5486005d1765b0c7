"""Name -> factory registries: configs name models, losses and regularisers; code looks them up here.

A user registers their own component without editing the package::

    from distill_jax.registry import losses
    @losses.register("my_loss")
    def my_loss(student, teacher, mask, **kw): ...
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A named table of callables with a decorator to add entries and an error that lists the known names."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, fn: T | None = None, *, overwrite: bool = False):
        def add(f: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not f:
                raise KeyError(f"{self.what} {name!r} is already registered; pass overwrite=True to replace it")
            self._items[name] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


models: Registry = Registry("model")
losses: Registry = Registry("loss")
regularizers: Registry = Registry("regularizer")
