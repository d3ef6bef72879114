"""dataset: model units from BLU's limits, augmentation, crops, lazy/in-memory reading, the seeded sampler."""

import pickle
import sys

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from astrosr.dataset import PairsDataset, TileSampler, augment
from astrosr.errors import InputError

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _pairs import SOURCES, make_pairs  # noqa: E402


def test_items_are_in_model_units_from_blu_limits(tiny_pairs, data_dir):
    ds = PairsDataset(tiny_pairs, field="train")
    with h5py.File(tiny_pairs, "r") as f:
        tiles, images, blu_stored = f["tiles"][()], f["images"][()], f["blu"][()]
    for i in (0, 5, 13):
        t, img = tiles[ds.rows[i]], images[tiles[ds.rows[i]]["image"]]
        name, _, rows, cols = SOURCES[t["image"]]
        ori_phys = fits.getdata(data_dir / name).astype(np.float64)[rows, cols][t["y"] : t["y"] + 128, t["x"] : t["x"] + 128]
        span = img["blu_hi"] - img["blu_lo"]
        item = ds[i]
        np.testing.assert_allclose(item["ori"][0].numpy(), (ori_phys - img["blu_lo"]) / span, rtol=2e-5, atol=2e-6)
        blu_phys = blu_stored[ds.rows[i]] * (img["hi"] - img["lo"]) + img["lo"]
        np.testing.assert_allclose(item["blu"][0].numpy(), (blu_phys - img["blu_lo"]) / span, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(item["cond"].numpy(), [t["psf_fwhm"], img["blu_bg_std"] / span], rtol=1e-6)
        assert item["psf"].shape == (41, 41) and item["psf"].sum().item() == pytest.approx(1.0, abs=1e-5)
        # mapping back to the file's units for scoring
        np.testing.assert_allclose(ds.to_stored(item["ori"][0].numpy(), i), f_ori(tiny_pairs, ds.rows[i]), atol=2e-6)


def f_ori(path, row):
    with h5py.File(path, "r") as f:
        return f["ori"][row]


def test_field_filter_and_unknown_field(tiny_pairs):
    assert len(PairsDataset(tiny_pairs, field="train")) == 16
    assert len(PairsDataset(tiny_pairs, field="val")) == 4
    assert len(PairsDataset(tiny_pairs, field=None)) == 20
    assert len(PairsDataset(tiny_pairs, field=["train", "val"])) == 20
    with pytest.raises(InputError, match="no tiles of field 'test'.*train, val"):
        PairsDataset(tiny_pairs, field="test")


def test_augmentation_is_one_of_the_eight_symmetries(tiny_pairs):
    plain = PairsDataset(tiny_pairs, field="train")[3]
    ds = PairsDataset(tiny_pairs, field="train", augment=True)
    seen = set()
    for code in range(8):
        item = ds[(3, code)]
        expected = np.rot90(plain["blu"][0].numpy(), k=code % 4)
        expected = expected[:, ::-1] if code // 4 else expected
        np.testing.assert_array_equal(item["blu"][0].numpy(), expected)
        np.testing.assert_array_equal(item["ori"][0].numpy(), augment(plain["ori"][0].numpy(), code))
        seen.add(item["blu"].numpy().tobytes())
    assert len(seen) == 8


def test_crop_cuts_blu_and_ori_at_the_same_place(tiny_pairs):
    full = PairsDataset(tiny_pairs, field="train")[2]
    item = PairsDataset(tiny_pairs, field="train", crop=48)[(2, 12345)]
    assert item["blu"].shape == item["ori"].shape == (1, 48, 48)
    blu, ori = full["blu"][0].numpy(), full["ori"][0].numpy()
    hits = [(y, x) for y in range(81) for x in range(81) if np.array_equal(blu[y : y + 48, x : x + 48], item["blu"][0].numpy())]
    assert len(hits) == 1
    y, x = hits[0]
    np.testing.assert_array_equal(ori[y : y + 48, x : x + 48], item["ori"][0].numpy())
    with pytest.raises(InputError, match="crop 200"):
        PairsDataset(tiny_pairs, crop=200)


def test_scale_two_pairs_give_half_size_blu(data_dir, tmp_path):
    path = make_pairs(tmp_path / "s2.h5", data_dir, scale=2)
    ds = PairsDataset(path, field="train", crop=64, augment=True)
    assert ds.scale == 2
    item = ds[(0, 99)]
    assert item["blu"].shape == (1, 32, 32) and item["ori"].shape == (1, 64, 64)
    whole = PairsDataset(path, field="val")[0]
    assert whole["blu"].shape == (1, 64, 64) and whole["ori"].shape == (1, 128, 128)


def test_lazy_and_in_memory_agree_and_pickle_without_a_handle(tiny_pairs):
    lazy = PairsDataset(tiny_pairs, field="train", augment=True)
    memory = PairsDataset(tiny_pairs, field="train", augment=True, in_memory=True)
    _ = lazy[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone._h5 is None
    for key in [(0, 1), (7, 5), (15, 2)]:
        for a, b in ((lazy[key], memory[key]), (lazy[key], clone[key])):
            assert torch.equal(a["blu"], b["blu"]) and torch.equal(a["ori"], b["ori"])


def test_dataloader_workers_see_the_same_batches(tiny_pairs):
    ds = PairsDataset(tiny_pairs, field="train", augment=True, crop=64)

    def batches(workers):
        sampler = TileSampler(len(ds), batch=4, seed=3)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
        it = iter(loader)
        return [next(it) for _ in range(3)]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a["blu"], b["blu"]) and torch.equal(a["index"], b["index"])


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_is_seeded_resumable_and_splits_ranks():
    stream = _take(TileSampler(10, batch=4, seed=1), 12)
    assert stream == _take(TileSampler(10, batch=4, seed=1), 12)
    assert stream != _take(TileSampler(10, batch=4, seed=2), 12)
    assert _take(TileSampler(10, batch=4, seed=1, start_step=2), 4) == stream[8:12]
    # every epoch visits each tile once
    assert sorted(i for i, _ in _take(TileSampler(10, batch=5, seed=1), 10)) == list(range(10))
    # two ranks share out the single-process stream of a global batch of 2 x 4
    single = _take(TileSampler(10, batch=8, seed=1), 16)
    r0 = _take(TileSampler(10, batch=4, seed=1, rank=0, world=2), 8)
    r1 = _take(TileSampler(10, batch=4, seed=1, rank=1, world=2), 8)
    assert r0[:4] + r1[:4] + r0[4:] + r1[4:] == single


def test_bad_pairs_files_are_one_line_errors(tmp_path, tiny_pairs):
    with pytest.raises(InputError, match="missing.h5: pairs file not found"):
        PairsDataset(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(InputError, match="notes.h5: not a readable HDF5 file"):
        PairsDataset(text)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("blu", data=np.zeros((1, 4, 4)))
    with pytest.raises(InputError, match="empty.h5: not an astrosr pairs file \\(no 'ori' dataset\\)"):
        PairsDataset(empty)
    future = tmp_path / "future.h5"
    future.write_bytes(tiny_pairs.read_bytes())
    with h5py.File(future, "a") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(InputError, match="schema_version 2 is not supported"):
        PairsDataset(future)


def test_reads_a_file_written_by_prepare(data_dir, tmp_path):
    prepare = pytest.importorskip("astrosr.prepare")
    out = tmp_path / "synth.h5"
    prepare.prepare_pairs([(data_dir / "synth.fits", "train")], out, progress=False)
    ds = PairsDataset(out, field="train", augment=True)
    assert len(ds) == 16
    item = ds[(5, 3)]
    assert item["blu"].shape == item["ori"].shape == (1, 128, 128)
    with h5py.File(out, "r") as f:
        img = f["images"][0]
        expected_noise = img["blu_bg_std"] / (img["blu_hi"] - img["blu_lo"])
    np.testing.assert_allclose(item["cond"].numpy(), [4.0, expected_noise], rtol=1e-6)
