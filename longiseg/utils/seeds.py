"""Seeds for random generators that keep 32 bits of their seed.

torch's CPU generator (``torch.manual_seed``, ``torch.Generator.manual_seed``) and NumPy's legacy global generator
(``np.random.seed``) use the low 32 bits of a seed, so seeds that differ by a multiple of ``2**32`` drew the same
numbers (the same initial weights for ``trainer.seed=0`` and ``2**32``). :func:`generator_seed` folds the accepted
seeds, ``[0, 2**63 - 1]``, into 32 bits: a seed below ``2**32`` is kept (so results of such seeds are unchanged), a
larger one is mixed with NumPy's ``SeedSequence``. It is for seeds users give; seeds that are well mixed already
(:func:`~longiseg.engine.seeding.epoch_seed`'s, 63 bits) are used as they are.
"""

from __future__ import annotations

import numpy as np

from longiseg.utils.validation import check_seed

__all__ = ["generator_seed"]


def generator_seed(seed: int, name: str = "seed") -> int:
    """The 32-bit seed to give a generator that keeps 32 bits, for a seed in ``[0, 2**63 - 1]``.

    Args:
        seed: the seed.
        name: the argument, for the messages.

    Returns:
        ``seed`` itself below ``2**32``, else a well-mixed int in ``[0, 2**32)`` derived from all its bits.

    Raises:
        TypeError, ValueError: ``seed`` is not an int in ``[0, 2**63 - 1]`` (naming ``name``).
    """
    seed = check_seed(name, seed)
    return seed if seed < 2**32 else int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])
