"""The store's errors: all StoreError, a ValueError (the package's contract for bad input)."""

from __future__ import annotations

__all__ = ["StoreClosedError", "StoreError", "StoreLockedError", "StoreMismatchError"]


class StoreError(ValueError):
    """A label store cannot be opened or written as asked."""


class StoreMismatchError(StoreError):
    """The store file belongs to another dataset (or an incompatible class list)."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreClosedError(StoreError):
    """The store was closed, or taken over by a newer LabelStore on the same file."""
