"""The one tiling implementation: grids of tile origins, extraction, and blended stitching.

prepare and evaluate cut bench-v1's non-overlapping grid (from pixel (0, 0),
partial edge tiles dropped, tiles with NaN skipped); deblur and evaluate's
restoration cover a whole image with overlapping tiles and stitch them back
with smooth weights, so there are no seams.
"""

import numpy as np

from .errors import ConfigError

__all__ = ["grid_origins", "nan_free", "extract_tiles", "cover_origins", "blend_weights", "map_tiles"]


def grid_origins(shape, tile=128, stride=None):
    """``(y, x)`` origins of whole tiles on a grid from (0, 0); partial edge tiles dropped."""
    stride = stride or tile
    if tile < 1 or stride < 1:
        raise ConfigError(f"tile and stride must be >= 1, got tile={tile}, stride={stride}")
    ys = range(0, shape[0] - tile + 1, stride)
    xs = range(0, shape[1] - tile + 1, stride)
    return [(y, x) for y in ys for x in xs]


def nan_free(image, origins, tile=128):
    """The origins whose tile holds no NaN in ``image``."""
    bad = np.isnan(image)
    return [(y, x) for y, x in origins if not bad[y : y + tile, x : x + tile].any()]


def extract_tiles(image, origins, tile=128):
    """Stack of tiles ``(N, tile, tile)`` cut at ``origins`` (same dtype as ``image``)."""
    out = np.empty((len(origins), tile, tile), dtype=image.dtype)
    for i, (y, x) in enumerate(origins):
        out[i] = image[y : y + tile, x : x + tile]
    return out


def _axis_starts(n, tile, step):
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step))
    return starts + [n - tile]


def cover_origins(shape, tile=128, overlap=32):
    """Origins of overlapping tiles covering every pixel; the last row/column is flush with the edge.

    The image must be at least ``tile`` on each side (pad smaller images first).
    """
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if shape[0] < tile or shape[1] < tile:
        raise ConfigError(f"image {shape} is smaller than the tile {tile}; pad it first")
    step = tile - overlap
    return [(y, x) for y in _axis_starts(shape[0], tile, step) for x in _axis_starts(shape[1], tile, step)]


def blend_weights(tile=128, overlap=32):
    """Separable weights: 1 in the middle, a sin^2 ramp over ``overlap`` px at each side, never 0."""
    ramp = np.ones(tile)
    if overlap > 0:
        rise = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        ramp[:overlap] = rise
        ramp[-overlap:] = np.minimum(ramp[-overlap:], rise[::-1])
    return np.outer(ramp, ramp)


def map_tiles(image, fn, *, tile=128, overlap=32, batch=16, scale=1, progress=None):
    """Apply ``fn`` to overlapping tiles of ``image`` and blend the results into one image.

    Parameters
    ----------
    image : ndarray (H, W)
        At least ``tile`` on each side; no NaN (fill them first).
    fn : callable
        ``fn(tiles)`` with ``tiles`` of shape ``(n, tile, tile)`` returns
        ``(n, tile*scale, tile*scale)``.
    tile, overlap : int
        Tile side and overlap in input pixels.
    batch : int
        Tiles per call of ``fn``: memory stays bounded for any image size.
    scale : int
        Output pixels per input pixel.
    progress : callable, optional
        Called with the number of tiles done after each batch.

    Returns
    -------
    ndarray (H*scale, W*scale), float64
    """
    origins = cover_origins(image.shape, tile, overlap)
    weights = blend_weights(tile * scale, overlap * scale)
    total = np.zeros((image.shape[0] * scale, image.shape[1] * scale))
    norm = np.zeros_like(total)
    side = tile * scale
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        restored = fn(extract_tiles(image, chunk, tile))
        for (y, x), out in zip(chunk, restored):
            ys, xs = y * scale, x * scale
            total[ys : ys + side, xs : xs + side] += weights * out
            norm[ys : ys + side, xs : xs + side] += weights
        if progress is not None:
            progress(len(chunk))
    return total / norm
