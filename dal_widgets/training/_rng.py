"""Torch's global random generator, shared by the threads of this package.

Torch has one global CPU generator per process. A fit seeds it and draws from it for its
whole run (dropout masks, a model's initial weights); a draw from another thread meanwhile
moves the fit's stream, and the same seed and labels then give another model. Every fit and
seeded model build of this package holds :data:`GLOBAL_RNG`, so fits in threads of one
process (a thread-pool grid, two sessions in one kernel) take turns and each repeats what it
gives alone. Models built only to receive saved weights are built only when there are
weights to load. Draws from the user's own code, or a model loaded by hand while another
session fits, are not covered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["GLOBAL_RNG", "seeded"]

#: Held while the global generator is seeded and drawn from (re-entrant: a seeded fit builds
#: its ensemble members' models seeded too).
GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int, devices: Sequence[Any] = ()) -> Iterator[None]:
    """Run the block on the global generator seeded with ``seed``, alone, and restore the
    generator's state afterwards (CUDA ``devices`` too)."""
    import torch

    with GLOBAL_RNG, torch.random.fork_rng(devices=list(devices)):
        torch.manual_seed(seed)
        yield
