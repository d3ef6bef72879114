"""The one tiling implementation: grids of tile origins, extraction, and blended stitching.

prepare and evaluate cut bench-v1's non-overlapping grid (from pixel (0, 0),
partial edge tiles dropped, tiles with NaN skipped); deblur and evaluate's
restoration cover a whole image with overlapping tiles and stitch them back
with smooth weights, so there are no seams. bench-v1's grid is
``benchmarks/README.md``, section Tiling.

Examples
--------
>>> import numpy as np
>>> from astrosr.tiling import grid_origins, map_tiles
>>> grid_origins((300, 260))  # partial tiles at the right and bottom are dropped
[(0, 0), (0, 128), (128, 0), (128, 128)]
>>> image = np.random.default_rng(0).normal(size=(300, 200))
>>> bool(np.allclose(map_tiles(image, lambda tiles: 2.0 * tiles), 2.0 * image))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import ConfigError
from .progress import report

__all__ = ["grid_origins", "nan_free", "extract_tiles", "cover_origins", "edge_ramp", "blend_weights", "fit_tile",
           "map_tiles"]


def _pair(tile):
    """``128`` -> ``(128, 128)``; a ``(ty, tx)`` pair passes through."""
    return (int(tile), int(tile)) if np.isscalar(tile) else (int(tile[0]), int(tile[1]))


def grid_origins(shape: Sequence[int], tile: int = 128, stride: int | None = None) -> list[tuple[int, int]]:
    """``(y, x)`` origins of whole tiles on a grid from (0, 0); partial edge tiles dropped.

    Parameters
    ----------
    shape : (int, int)
        Image shape.
    tile : int
        Tile side.
    stride : int, optional
        Grid step (default ``tile``: non-overlapping, as bench-v1 scores).

    Returns
    -------
    list of (int, int)

    Raises
    ------
    ConfigError
        ``tile`` or ``stride`` < 1.

    Examples
    --------
    >>> grid_origins((300, 260))
    [(0, 0), (0, 128), (128, 0), (128, 128)]
    >>> grid_origins((256, 256), 128, stride=64)[:3]
    [(0, 0), (0, 64), (0, 128)]
    """
    stride = stride or tile
    if tile < 1 or stride < 1:
        raise ConfigError(f"tile and stride must be >= 1, got tile={tile}, stride={stride}")
    ys = range(0, shape[0] - tile + 1, stride)
    xs = range(0, shape[1] - tile + 1, stride)
    return [(y, x) for y in ys for x in xs]


def nan_free(image: np.ndarray, origins: Sequence[tuple[int, int]], tile: int = 128) -> list[tuple[int, int]]:
    """The origins whose tile holds no NaN in ``image``.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((256, 256))
    >>> image[10, 200] = np.nan
    >>> nan_free(image, grid_origins(image.shape))
    [(0, 0), (128, 0), (128, 128)]
    """
    bad = np.isnan(image)
    return [(y, x) for y, x in origins if not bad[y : y + tile, x : x + tile].any()]


def extract_tiles(
    image: np.ndarray, origins: Sequence[tuple[int, int]], tile: int | tuple[int, int] = 128
) -> np.ndarray:
    """Stack of tiles ``(N, ty, tx)`` cut at ``origins`` (same dtype as ``image``); ``tile`` is a side or ``(ty, tx)``.

    Examples
    --------
    >>> import numpy as np
    >>> extract_tiles(np.arange(16.0).reshape(4, 4), [(0, 0), (2, 2)], 2)
    array([[[ 0.,  1.],
            [ 4.,  5.]],
    <BLANKLINE>
           [[10., 11.],
            [14., 15.]]])
    """
    ty, tx = _pair(tile)
    out = np.empty((len(origins), ty, tx), dtype=image.dtype)
    for i, (y, x) in enumerate(origins):
        out[i] = image[y : y + ty, x : x + tx]
    return out


def _axis_starts(n, tile, step):
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step))
    return starts + [n - tile]


def cover_origins(
    shape: Sequence[int], tile: int | tuple[int, int] = 128, overlap: int = 32
) -> list[tuple[int, int]]:
    """Origins of overlapping tiles covering every pixel; the last row/column is flush with the edge.

    ``tile`` is a side or ``(ty, tx)``. The image must be at least that big
    (pad smaller images first).

    Raises
    ------
    ConfigError
        ``overlap`` is not in ``[0, tile)``, or the image is smaller than a tile.

    Examples
    --------
    >>> cover_origins((300, 200), 128, 32)
    [(0, 0), (0, 72), (96, 0), (96, 72), (172, 0), (172, 72)]
    """
    ty, tx = _pair(tile)
    if not 0 <= overlap < min(ty, tx):
        raise ConfigError(f"overlap must be in [0, tile={min(ty, tx)}), got {overlap}")
    if shape[0] < ty or shape[1] < tx:
        raise ConfigError(f"image {shape} is smaller than the tile {tile}; pad it first")
    return [(y, x) for y in _axis_starts(shape[0], ty, ty - overlap) for x in _axis_starts(shape[1], tx, tx - overlap)]


def fit_tile(n: int, max_tile: int, overlap: int, *, multiple: int = 16) -> int:
    """Tile side for an axis of ``n`` px: as few tiles as ``max_tile`` allows, each as small as covers ``n``.

    A fixed tile wastes work when the last tile is flush with the edge (a
    720 px axis needs four 256 px tiles, 1024 px of work); spreading the same
    number of tiles evenly needs only ``n + (count - 1) * overlap`` px.
    The side is rounded up to a ``multiple``, never beyond ``max_tile`` or
    ``n``, so a network that pads its input to a multiple of its downsampling
    factor pads nothing.

    Examples
    --------
    >>> fit_tile(720, 256, 32)  # four tiles of 208 px instead of 256
    208
    >>> fit_tile(100, 256, 32)  # an axis shorter than a tile is one tile
    100
    """
    if n <= max_tile:
        return n
    count = int(np.ceil((n - overlap) / (max_tile - overlap)))
    side = int(np.ceil((n - overlap) / count)) + overlap
    return min(n, max_tile, -(-side // multiple) * multiple)


def edge_ramp(n: int, rise: int, fall: int) -> np.ndarray:
    """1-D blend weights: a sin^2 rise over the first ``rise`` px, 1, a cos^2 fall over the last ``fall`` px.

    Where one window falls over ``k`` px and the next rises over the same ``k`` px, the two sum to 1.

    Examples
    --------
    >>> w = edge_ramp(8, 2, 0)
    >>> bool(w[0] > 0), float(w[-1]), bool(np.allclose(edge_ramp(4, 0, 4) + edge_ramp(4, 4, 0), 1.0))
    (True, 1.0, True)
    """
    def up(k):
        return np.sin(0.5 * np.pi * (np.arange(k) + 0.5) / k) ** 2

    ramp = np.ones(n)
    if rise > 0:
        ramp[:rise] = up(rise)
    if fall > 0:
        ramp[-fall:] = np.minimum(ramp[-fall:], up(fall)[::-1])
    return ramp


def _ramp(n, overlap):
    return edge_ramp(n, overlap, overlap)


def blend_weights(tile: int | tuple[int, int] = 128, overlap: int = 32) -> np.ndarray:
    """Separable weights: 1 in the middle, a sin^2 ramp over ``overlap`` px at each side, never 0.

    Examples
    --------
    >>> w = blend_weights(8, 2)
    >>> w.shape, float(w.max()), bool(w.min() > 0)
    ((8, 8), 1.0, True)
    """
    ty, tx = _pair(tile)
    return np.outer(_ramp(ty, overlap), _ramp(tx, overlap))


def map_tiles(
    image: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    tile: int | tuple[int, int] = 128,
    overlap: int = 32,
    batch: int = 16,
    scale: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """Apply ``fn`` to overlapping tiles of ``image`` and blend the results into one image.

    Parameters
    ----------
    image : ndarray (H, W)
        At least ``tile`` on each side; no NaN (fill them first).
    fn : callable
        ``fn(tiles)`` with ``tiles`` of shape ``(n, ty, tx)`` returns
        ``(n, ty*scale, tx*scale)``.
    tile : int or (int, int)
        Tile side, or ``(ty, tx)``, in input pixels.
    overlap : int
        Overlap in input pixels.
    batch : int
        Tiles per call of ``fn``: memory stays bounded for any image size.
    scale : int
        Output pixels per input pixel.
    progress : callable, optional
        ``progress('tiles', done, total)`` after each batch (:mod:`astrosr.progress`).

    Returns
    -------
    ndarray (H*scale, W*scale)
        float32 when ``fn`` returns float32 (a blend of a few tiles needs no
        more, and a 10k x 10k image then holds 400 MB, not 1.6 GB), else float64.

    Examples
    --------
    An identity ``fn`` gives the image back: the weights sum to 1 everywhere.

    >>> import numpy as np
    >>> image = np.random.default_rng(0).normal(size=(300, 200)).astype(np.float32)
    >>> out = map_tiles(image, lambda tiles: tiles, tile=128, overlap=32)
    >>> out.dtype, bool(np.allclose(out, image, atol=1e-5))
    (dtype('float32'), True)
    >>> map_tiles(image, lambda tiles: tiles.repeat(2, axis=1).repeat(2, axis=2), scale=2).shape
    (600, 400)
    """
    origins = cover_origins(image.shape, tile, overlap)
    ty, tx = _pair(tile)
    ramp_y, ramp_x = _ramp(ty * scale, overlap * scale), _ramp(tx * scale, overlap * scale)
    weights = total = None
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        restored = fn(extract_tiles(image, chunk, (ty, tx)))
        if total is None:
            dtype = np.float32 if np.asarray(restored).dtype == np.float32 else np.float64
            weights = np.outer(ramp_y, ramp_x).astype(dtype)
            total = np.zeros((image.shape[0] * scale, image.shape[1] * scale), dtype=dtype)
        for (y, x), out in zip(chunk, restored):
            window = (slice(y * scale, (y + ty) * scale), slice(x * scale, (x + tx) * scale))
            total[window] += weights * out
        report(progress, "tiles", start + len(chunk), len(origins))
    # the origins are a product of row and column starts and the weights are separable,
    # so the sum of weights is the outer product of two 1-D sums: no full-size array
    norm_y, norm_x = np.zeros(total.shape[0]), np.zeros(total.shape[1])
    for y in sorted({y for y, _ in origins}):
        norm_y[y * scale : (y + ty) * scale] += ramp_y
    for x in sorted({x for _, x in origins}):
        norm_x[x * scale : (x + tx) * scale] += ramp_x
    for start in range(0, total.shape[0], 1024):
        rows = slice(start, start + 1024)
        total[rows] /= np.outer(norm_y[rows], norm_x)
    return total
