"""astrosr: restore blurred astronomical images.

The data flow, one module per stage::

    fits_io -> degrade -> tiling -> prepare (HDF5) -> dataset -> models
            -> train -> evaluate / deblur

with ``cli``, ``config`` and ``errors`` beside them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
