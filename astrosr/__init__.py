"""astrosr: restore blurred astronomical images.

The data flow, one module per stage::

    fits_io -> degrade -> tiling -> prepare (HDF5) -> dataset -> models
            -> train -> evaluate / deblur

with ``cli``, ``config`` and ``errors`` beside them.
"""

import os

# OpenMP threads that spin while waiting made torch 3-7x slower on a busy
# 2-core machine (measured); sleeping threads cost nothing measurable when idle.
# Set before torch is first imported; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__"]
