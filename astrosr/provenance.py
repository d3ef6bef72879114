"""What every output records about the software and machine that made it.

bench-v1 rows state the hardware and thread count beside every time
(``benchmarks/README.md``, section Report rows and baselines), and the
library versions that decide the figures.

Examples
--------
>>> from astrosr.provenance import hardware, versions
>>> sorted(versions())[:3]
['astropy', 'astrosr', 'numpy']
>>> hardware("cpu")["device"]
'cpu'
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

__all__ = ["cpu_name", "versions", "hardware", "utc_now"]


def cpu_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo``), else what :mod:`platform` knows.

    Examples
    --------
    >>> isinstance(cpu_name(), str)
    True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Versions of astrosr and the libraries whose behaviour decides its numbers.

    Examples
    --------
    >>> sorted(versions())
    ['astropy', 'astrosr', 'numpy', 'photutils', 'python', 'scipy', 'skimage', 'torch']
    """
    import astropy
    import numpy
    import photutils
    import scipy
    import skimage
    import torch

    from . import __version__

    return {
        "astrosr": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "astropy": astropy.__version__,
        "photutils": photutils.__version__,
        "skimage": skimage.__version__,
    }


def hardware(device: object = None) -> dict[str, object]:
    """CPU, core count, GPU (if any), the torch device used and torch's thread count.

    Parameters
    ----------
    device : str or torch.device, optional
        The device the run used (recorded as a string).

    Returns
    -------
    dict
        ``cpu``, ``cpu_count``, ``gpu`` (None without CUDA), ``device``, ``threads``.

    Examples
    --------
    >>> sorted(hardware("cpu"))
    ['cpu', 'cpu_count', 'device', 'gpu', 'threads']
    """
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": None if device is None else str(device),
        "threads": torch.get_num_threads(),
    }


def utc_now() -> datetime.datetime:
    """The date written into outputs: now in UTC, or ``$SOURCE_DATE_EPOCH`` when set (reproducible builds' convention).

    With it set, two runs write the same dates, so their FITS and HDF5 outputs can be byte-identical.

    Examples
    --------
    >>> import os
    >>> os.environ["SOURCE_DATE_EPOCH"] = "0"
    >>> utc_now().isoformat()
    '1970-01-01T00:00:00+00:00'
    >>> del os.environ["SOURCE_DATE_EPOCH"]
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
        except (ValueError, OverflowError, OSError):
            pass  # a malformed value is the same as none: the real date
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
