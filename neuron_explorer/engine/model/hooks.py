"""Hook handles that always come off, even when the body raises: a hook left behind silently changes every later
number (it happened in the authors' evaluation code)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def forward_hooks(hooks: list[tuple[nn.Module, Callable]], *, pre: bool = False) -> Iterator[None]:
    """Register `(module, hook)` pairs as forward (or forward-pre) hooks for the duration of the block."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
