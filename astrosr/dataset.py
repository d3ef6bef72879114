"""Training tiles from a pairs file, in the units the model sees.

The pairs file (:mod:`astrosr.pairs`) stores ``blu`` and ``ori`` normalised
with ORI's bench-v1 limits. A model may only be given what deblur has at
inference, the blurred image and its PSF, never ORI's statistics; so each
tile is re-mapped with its image's BLU limits::

    x_model = (x_phys - blu_lo) / (blu_hi - blu_lo) = m * x_stored + c
    m = (hi - lo) / (blu_hi - blu_lo),  c = (lo - blu_lo) / (blu_hi - blu_lo)

for both BLU and the ORI target, and ``cond = [psf_fwhm, blu_bg_std / (blu_hi -
blu_lo)]``. ``(m, c)`` travel with every item so scores can map back.

Randomness (which tiles, in which order, which flip/rotation, which crop) is
drawn by :class:`TileSampler` as a pure function of ``(seed, position)``, so a
resumed or multi-process run sees exactly the batches a straight run sees.

Examples
--------
>>> from astrosr.dataset import PairsDataset, TileSampler
>>> ds = PairsDataset("pairs.h5", field="train", augment=True, crop=64)  # doctest: +SKIP
>>> sampler = TileSampler(len(ds), batch=16, seed=0)  # doctest: +SKIP
>>> loader = torch.utils.data.DataLoader(ds, batch_size=16, sampler=sampler)  # doctest: +SKIP
>>> next(iter(loader))["blu"].shape  # doctest: +SKIP
torch.Size([16, 1, 64, 64])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from . import pairs as pairs_file
from .errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["PairsDataset", "TileSampler", "augment"]


def augment(array: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes of ``array``, chosen by ``code % 8``.

    Examples
    --------
    >>> augment(np.array([[1, 2], [3, 4]]), 1)
    array([[2, 4],
           [1, 3]])
    """
    array = np.rot90(array, k=code % 4, axes=(-2, -1))
    if (code // 4) % 2:
        array = array[..., ::-1]
    return np.ascontiguousarray(array)


class PairsDataset(Dataset):
    """The tiles of one or more fields of a pairs file, as model-unit tensors.

    The HDF5 file is opened lazily in whichever process reads it (so the
    dataset works in DataLoader workers and under DDP); ``in_memory=True``
    reads the selected tiles once instead.

    Parameters
    ----------
    path : str or Path
        Pairs file.
    field : str, sequence of str or None
        Keep tiles of these fields (None: all).
    in_memory : bool
        Load the selected tiles into memory at construction.
    augment : bool
        Apply the flip/rotation chosen by the sampler's code.
    crop : int or None
        Random square crop of this many ORI pixels (None: whole tiles).
    only_images : sequence of int, optional
        Keep only the tiles of these images (rows of the ``images`` table).
    skip_images : sequence of int
        Leave out the tiles of these images (held out for validation).

    Items are dicts: ``blu (1, h, w)``, ``ori (1, H, W)``, ``psf (k, k)``,
    ``cond (2,)``, ``affine (2,) = (m, c)``, ``ori_noise`` (ORI's background
    std, model units), ``index`` (row in the file).
    Index with an int, or with ``(int, code)`` where ``code`` picks the
    augmentation and crop.

    Attributes
    ----------
    meta : astrosr.pairs.PairsMeta
        The file's tables, kernels and attributes.
    tiles : numpy structured array
        The ``tiles`` rows of the selected fields (``all_tiles``: every row).
    rows : numpy array of int
        Their row numbers in the file.
    scale : int
        The file's BLU block-average factor.

    Raises
    ------
    InputError
        No tile of ``field`` in the file, or a ``crop`` that does not fit the tiles.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.dataset import PairsDataset
    >>> from astrosr.prepare import prepare_pairs
    >>> from astrosr.simulate import write_simulated
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = write_simulated(tmp / "sim.fits", seed=3, index=0, size=256)
    >>> _ = prepare_pairs([tmp / "sim.fits"], tmp / "pairs.h5")
    >>> ds = PairsDataset(tmp / "pairs.h5", field="train")
    >>> len(ds), sorted(ds[0])
    (4, ['affine', 'blu', 'cond', 'index', 'ori', 'ori_noise', 'psf'])
    >>> ds[0]["blu"].shape, ds[0]["cond"].shape
    (torch.Size([1, 128, 128]), torch.Size([2]))
    >>> cropped = PairsDataset(tmp / "pairs.h5", augment=True, crop=64)
    >>> cropped[0, 12345]["ori"].shape  # the code 12345 picks the flip/rotation and the crop
    torch.Size([1, 64, 64])
    >>> PairsDataset(tmp / "pairs.h5", field="val")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.InputError: ...pairs.h5: no tiles of field 'val' (fields present: train)
    """

    def __init__(self, path: str | os.PathLike, *, field: str | list[str] | None = "train", in_memory: bool = False,
                 augment: bool = False, crop: int | None = None, only_images: Sequence[int] | None = None,
                 skip_images: Sequence[int] = ()):
        self.path = os.fspath(path)
        self.meta = pairs_file.read_meta(self.path)
        tiles, images, psfs, attrs = self.meta.tiles, self.meta.images, self.meta.psfs, self.meta.attrs
        self.scale = int(attrs.get("scale", 1))
        self.attrs = attrs
        fields = pairs_file.fields(tiles)
        if field is None:
            keep = np.ones(len(tiles), bool)
        else:
            wanted = [field] if isinstance(field, str) else list(field)
            keep = np.isin(fields, wanted)
            if not keep.any():
                present = ", ".join(sorted(set(fields))) or "none"
                raise InputError(f"{self.path}: no tiles of field {field!r} (fields present: {present})")
        if only_images is not None:
            keep &= np.isin(tiles["image"], list(only_images))
        if len(skip_images):
            keep &= ~np.isin(tiles["image"], list(skip_images))
        if not keep.any():
            raise InputError(f"{self.path}: no tiles left of field {field!r} once images are held out")
        self.rows = np.flatnonzero(keep)
        self.all_tiles = tiles
        self.tiles = tiles[self.rows]
        self.images = images
        self.psfs = psfs
        img = images[self.tiles["image"]]
        span = (img["blu_hi"] - img["blu_lo"]).astype(np.float64)
        if np.any(span <= 0):
            raise InputError(f"{self.path}: an image has blu_hi <= blu_lo")
        self.m = ((img["hi"] - img["lo"]) / span).astype(np.float32)
        self.c = ((img["lo"] - img["blu_lo"]) / span).astype(np.float32)
        self.cond = np.stack([self.tiles["psf_fwhm"], img["blu_bg_std"] / span], axis=1).astype(np.float32)
        # ORI's own noise (its sigma-clipped background std) in model units: an error no restoration can remove
        self.ori_noise = (img["bg_std"] / span).astype(np.float32)
        self.augment = bool(augment)
        self.crop = int(crop) if crop else None
        if self.crop is not None:
            self._check_crop()
        self._h5 = None
        self._pid = None
        self._memory = None
        if in_memory:
            with h5py.File(self.path, "r") as f:
                self._memory = (self._take(f["blu"]), self._take(f["ori"]))

    def _check_crop(self):
        with h5py.File(self.path, "r") as f:
            side = f["ori"].shape[-1]
        if self.crop > side or self.crop % self.scale or self.crop < 8:
            raise InputError(f"crop {self.crop} must be in [8, {side}] and a multiple of the scale {self.scale}")

    def _take(self, ds):
        # one contiguous read beats h5py's fancy indexing for the sizes a field has
        lo, hi = self.rows.min(), self.rows.max() + 1
        return ds[lo:hi][self.rows - lo]

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored ``(blu, ori)`` of item ``i`` as float32 numpy arrays (no conversion, no augmentation)."""
        if self._memory is not None:
            return self._memory[0][i], self._memory[1][i]
        f = self._file()
        row = int(self.rows[i])
        return f["blu"][row], f["ori"][row]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, code = (key if isinstance(key, tuple) else (key, 0))
        i, code = int(i), int(code)
        blu, ori = self.arrays(i)
        m, c = self.m[i], self.c[i]
        blu = blu.astype(np.float32) * m + c
        ori = ori.astype(np.float32) * m + c
        psf = self.psfs[self.tiles["psf_index"][i]]
        if self.crop is not None:
            rng = np.random.default_rng(code)
            lr = self.crop // self.scale
            oy = int(rng.integers(0, blu.shape[0] - lr + 1))
            ox = int(rng.integers(0, blu.shape[1] - lr + 1))
            blu = blu[oy : oy + lr, ox : ox + lr]
            s = self.scale
            ori = ori[oy * s : (oy + lr) * s, ox * s : (ox + lr) * s]
        if self.augment:
            blu, ori, psf = augment(blu, code), augment(ori, code), augment(psf, code)
        return {
            "blu": torch.from_numpy(np.ascontiguousarray(blu))[None],
            "ori": torch.from_numpy(np.ascontiguousarray(ori))[None],
            "psf": torch.from_numpy(np.ascontiguousarray(psf)),
            "cond": torch.from_numpy(self.cond[i]),
            "affine": torch.tensor([m, c]),
            "ori_noise": torch.tensor(self.ori_noise[i]),
            "index": int(self.rows[i]),
        }

    def to_stored(self, x: np.ndarray, i: int) -> np.ndarray:
        """Model units -> the file's ORI-normalised units for item ``i`` (bench-v1 scoring before the clip)."""
        return (x - self.c[i]) / self.m[i]


class TileSampler(Sampler):
    """Endless, seeded stream of ``(index, code)`` pairs; one rank's share of each global batch.

    The global stream visits the ``n`` tiles in a fresh permutation per epoch,
    each visit with a random 31-bit ``code`` (augmentation and crop); both are
    functions of ``(seed, epoch)`` only. Global step ``s`` consists of stream
    items ``[s*B*W, (s+1)*B*W)`` and rank ``r`` takes the ``r``-th block of
    ``B``, so resuming at ``start_step`` or changing the number of workers
    never changes which tiles a step sees.

    Parameters
    ----------
    n : int
        Dataset length.
    batch : int
        Per-rank batch size B.
    seed : int
    rank, world : int
        This process and the number of processes W.
    start_step : int
        First step to yield.

    Examples
    --------
    >>> from astrosr.dataset import TileSampler
    >>> stream = iter(TileSampler(4, batch=2, seed=0))
    >>> first = [next(stream) for _ in range(4)]  # steps 0 and 1: (index, code) pairs
    >>> sorted(index for index, _ in first)  # one epoch visits every tile once
    [0, 1, 2, 3]
    >>> resumed = iter(TileSampler(4, batch=2, seed=0, start_step=1))
    >>> [next(resumed) for _ in range(2)] == first[2:]  # a resumed run sees the same step 1
    True
    >>> rank1 = iter(TileSampler(4, batch=1, seed=0, rank=1, world=2))
    >>> next(rank1) == first[1]  # two ranks of batch 1 share the global batch of 2
    True
    """

    def __init__(self, n: int, *, batch: int, seed: int = 0, rank: int = 0, world: int = 1, start_step: int = 0):
        if n < 1:
            raise InputError("no tiles to sample from")
        self.n, self.batch, self.seed = n, batch, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self._epoch_cache = {}

    def _epoch(self, e):
        if e not in self._epoch_cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            perm = torch.randperm(self.n, generator=gen)
            codes = torch.randint(0, 2**31 - 1, (self.n,), generator=gen)
            self._epoch_cache = {e: (perm.tolist(), codes.tolist())}
        return self._epoch_cache[e]

    def item(self, g: int) -> tuple[int, int]:
        """Global stream item ``g`` as ``(index, code)``."""
        perm, codes = self._epoch(g // self.n)
        return perm[g % self.n], codes[g % self.n]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            first = (step * self.world + self.rank) * self.batch
            for g in range(first, first + self.batch):
                yield self.item(g)
            step += 1
