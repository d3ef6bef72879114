"""What every output records about the software and machine that made it."""

import os
import platform
from pathlib import Path

__all__ = ["cpu_name", "versions", "hardware"]


def cpu_name():
    """The CPU model as the OS names it (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    """Versions of astrosr and the libraries whose behaviour decides its numbers."""
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


def hardware(device=None):
    """CPU, core count, GPU (if any), the torch device used and torch's thread count."""
    import torch

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": None if device is None else str(device),
        "threads": torch.get_num_threads(),
    }
