"""pairs: the one owner of the pairs-file layout (writer, reader, summary, helpers); no private imports."""

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from astrosr import pairs
from astrosr.errors import ConfigError, InputError

ROW = ("/data/a.fits", "a" * 64, "train", 16, 16, 0.0, 2.0, 0.1, 1.9, 0.5, 0.4, 0.2, 0.3, 0, -1)


def _write(path, *, tile=16, scale=1, compression="lzf", images=(("train", 3), ("val", 2))):
    rng = np.random.default_rng(0)
    with pairs.PairsWriter(path, tile=tile, scale=scale, compression=compression) as writer:
        for k, (field, n) in enumerate(images):
            row = (f"/data/image_{k}.fits",) + ROW[1:2] + (field,) + ROW[3:]
            tiles = [(k, 0, 16 * j, field, k % 2, 3.0 + k, 0.5) for j in range(n)]
            writer.append(row, rng.random((n, tile // scale, tile // scale)), rng.random((n, tile, tile)), tiles)
        kernels = np.zeros((2, 5, 5), np.float32)
        kernels[:, 2, 2] = 1
        writer.finish(kernels, [{"shape": "moffat", "fwhm": 3.0}, {"shape": "gaussian", "fwhm": 4.0}], [3.0, 4.0],
                      config={"psf_shape": "moffat,gaussian", "psf_beta": 3.0, "seed": 1})
    return path


def _old_layout(path, blu, ori, tiles, images, kernels, params, fwhm, storage, attrs):
    """The layout exactly as prepare wrote it before pairs.py existed, with h5py alone."""
    t, b = ori.shape[-1], blu.shape[-1]
    with h5py.File(path, "w") as h5:
        blu_ds = h5.create_dataset("blu", (0, b, b), maxshape=(None, b, b), chunks=(1, b, b), dtype="f4", **storage)
        ori_ds = h5.create_dataset("ori", (0, t, t), maxshape=(None, t, t), chunks=(1, t, t), dtype="f4", **storage)
        tiles_ds = h5.create_dataset("tiles", (0,), maxshape=(None,), chunks=(4096,), dtype=pairs.TILE_DTYPE)
        for ds, data in ((blu_ds, blu), (ori_ds, ori)):
            ds.resize(len(data), axis=0)
            ds[:] = data
        tiles_ds.resize(len(tiles), axis=0)
        tiles_ds[:] = np.array(tiles, dtype=pairs.TILE_DTYPE)
        width = max(len(row[0].encode()) for row in images)
        h5.create_dataset("images", data=np.array(images, dtype=[("path", f"S{width}")] + pairs.IMAGE_FIELDS))
        k = h5.create_dataset("psfs", data=kernels)
        k.attrs["params"] = json.dumps(params)
        k.attrs["fwhm"] = np.array(fwhm, dtype=np.float32)
        h5.attrs.update(attrs)


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none"])
def test_writer_matches_the_layout_byte_for_byte(tmp_path, compression):
    rng = np.random.default_rng(1)
    blu, ori = rng.random((3, 8, 8)), rng.random((3, 16, 16))
    tiles = [(0, 0, 16 * j, "train", 0, 4.0, 0.25) for j in range(3)]
    kernels, params, fwhm = np.full((1, 3, 3), 1 / 9, np.float32), [{"shape": "moffat", "fwhm": 4.0}], [4.0]
    with pairs.PairsWriter(tmp_path / "new.h5", tile=16, scale=2, compression=compression) as writer:
        assert writer.append(ROW, blu, ori, tiles) == 3 and writer.n_tiles == 3
        writer.finish(kernels, params, fwhm, config={"seed": 0})
    with h5py.File(tmp_path / "new.h5") as new:
        attrs = dict(new.attrs)
    _old_layout(tmp_path / "old.h5", blu, ori, tiles, [ROW], kernels, params, fwhm, pairs.COMPRESSION[compression],
                attrs)
    with h5py.File(tmp_path / "new.h5") as new, h5py.File(tmp_path / "old.h5") as old:
        for name in pairs.DATASETS:
            a, b = new[name], old[name]
            assert a.dtype == b.dtype and a.shape == b.shape and a[()].tobytes() == b[()].tobytes(), name
            assert (a.chunks, a.compression, a.compression_opts, a.shuffle) == \
                   (b.chunks, b.compression, b.compression_opts, b.shuffle), name
        assert new["psfs"].attrs["params"] == old["psfs"].attrs["params"]
        assert new["psfs"].attrs["fwhm"].tobytes() == old["psfs"].attrs["fwhm"].tobytes()
        assert set(new.attrs) == {"schema_version", "astrosr_version", "config", "created", "scale", "tile"}
        assert (new.attrs["schema_version"], new.attrs["scale"], new.attrs["tile"]) == (pairs.SCHEMA_VERSION, 2, 16)
        assert json.loads(new.attrs["config"]) == {"seed": 0}


def test_writer_leaves_nothing_on_error_or_without_finish(tmp_path):
    out = tmp_path / "p.h5"
    with pytest.raises(ValueError, match="boom"):
        with pairs.PairsWriter(out, tile=16) as writer:
            writer.append(ROW, np.zeros((1, 16, 16)), np.zeros((1, 16, 16)), [(0, 0, 0, "train", 0, 4.0, 0.1)])
            raise ValueError("boom")
    with pytest.raises(RuntimeError, match="without finish"):
        with pairs.PairsWriter(out, tile=16):
            pass
    assert list(tmp_path.iterdir()) == []
    _write(out)
    with pytest.raises(InputError, match=r"p\.h5: output exists"):
        pairs.PairsWriter(out, tile=16).__enter__()
    with pairs.PairsWriter(out, tile=16, overwrite=True) as writer:
        writer.append(ROW, np.zeros((1, 16, 16)), np.zeros((1, 16, 16)), [(0, 0, 0, "val", 0, 4.0, 0.1)])
        writer.finish(np.ones((1, 1, 1), np.float32), [{"shape": "moffat"}], [4.0], config={})
    assert pairs.fields(pairs.read_meta(out).tiles).tolist() == ["val"]
    with pytest.raises(ConfigError, match="compression: expected lzf, gzip, none, got 'zstd'"):
        pairs.PairsWriter(out, tile=16, compression="zstd")


def test_read_meta_returns_the_tables_and_checks_the_file(tmp_path):
    path = _write(tmp_path / "p.h5")
    meta = pairs.read_meta(path)
    assert meta.tiles.dtype == pairs.TILE_DTYPE and len(meta.tiles) == 5
    assert meta.images.dtype == pairs.image_dtype(len("/data/image_0.fits"))
    assert meta.psfs.dtype == np.float32 and meta.psfs.shape == (2, 5, 5)
    assert meta.attrs["schema_version"] == 1 and meta.psf_params[1]["shape"] == "gaussian"
    tiles, images, psfs, attrs, params = meta  # a plain tuple too
    assert pairs.fields(tiles).tolist() == ["train"] * 3 + ["val"] * 2
    with h5py.File(path, "a") as f:
        f["blu"].resize(4, axis=0)
    with pytest.raises(InputError, match=r"p\.h5: 'blu'/'ori' and 'tiles' disagree"):
        pairs.read_meta(path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 7
    with pytest.raises(InputError, match=r"p\.h5: pairs schema_version 7 is not supported \(expected 1\)"):
        pairs.read_meta(path)


def test_summary_of_a_written_file(tmp_path):
    s = pairs.summary(_write(tmp_path / "p.h5"))
    assert s["n_tiles"] == 5 and s["tiles_per_field"] == {"train": 3, "val": 2}
    assert s["ori_shape"] == (16, 16) and s["blu_shape"] == (16, 16) and s["compression"] == "lzf"
    assert [im["n_tiles"] for im in s["images"]] == [3, 2] and s["images"][1]["field"] == "val"
    assert s["psf_fwhm_range"] == (3.0, 4.0) and s["psfs"]["count"] == 2 and s["config"]["seed"] == 1
    assert s["attrs"]["schema_version"] == 1 and isinstance(s["attrs"]["created"], str)


def test_trained_psf_one_kernel_or_the_config_range(tmp_path):
    meta = pairs.read_meta(_write(tmp_path / "p.h5"))
    fwhm = meta.tiles["psf_fwhm"]
    assert pairs.trained_psf(meta, fwhm) == {"shape": "moffat,gaussian", "fwhm": 3.0, "beta": 3.0,
                                             "fwhm_range": [3.0, 4.0]}
    one = meta._replace(psf_params=[{"shape": "moffat", "fwhm": 4.0, "beta": 3.0}])
    assert pairs.trained_psf(one, fwhm) == {"shape": "moffat", "fwhm": 4.0, "beta": 3.0}


def test_field_images_are_python_values(tmp_path):
    meta = pairs.read_meta(_write(tmp_path / "p.h5"))
    (val,) = pairs.field_images(meta.images, "val")
    assert val == pairs.ImageRecord(1, Path("/data/image_1.fits"), "a" * 64, "val", 0, None)
    assert pairs.field_images(meta.images, "other_sky") == []
    assert pairs.as_text(b"abc") == "abc" and pairs.as_text(np.bytes_(b"x")) == "x"


def _private_imports(path):
    """``(module, name)`` of every ``from astrosr.x import _name`` / ``from .x import _name`` / ``x._name`` in ``path``."""
    tree = ast.parse(Path(path).read_text())
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.level or (node.module or "").startswith("astrosr")) for alias in node.names
               if not alias.name.startswith("_")}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("astrosr")):
            found += [(node.module, a.name) for a in node.names if a.name.startswith("_") and a.name != "__version__"]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append((node.value.id, node.attr))
    return found


@pytest.mark.parametrize("name", ["pairs", "prepare", "dataset", "validation", "train", "losses", "train_log",
                                  "train_runtime"])
def test_no_private_names_imported_from_other_modules(name):
    import astrosr

    assert _private_imports(Path(astrosr.__file__).parent / f"{name}.py") == []


def test_with_source_date_epoch_two_pairs_files_are_byte_identical(tmp_path, data_dir, monkeypatch):
    from astrosr.prepare import prepare_pairs

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    prepare_pairs([data_dir / "M51.fits"], tmp_path / "a.h5")
    prepare_pairs([data_dir / "M51.fits"], tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_a_disk_that_fills_up_stops_prepare_cleanly_before_hdf5_fails(tmp_path, data_dir, monkeypatch):
    """HDF5 cannot close a file it could not write, and then crashes the interpreter at exit: check the room first."""
    import collections
    import shutil

    from click.testing import CliRunner

    from astrosr.cli import cli

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    result = CliRunner().invoke(cli, ["prepare", str(data_dir / "M51.fits"), "-o", str(tmp_path / "p.h5")])
    assert result.exit_code == 2 and "p.h5: cannot write (No space left on device)" in result.stderr, result.output
    assert list(tmp_path.iterdir()) == []
