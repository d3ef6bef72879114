"""Data manifests: bench_v1.yaml, file resolution and checksums, and fetch over file:// URLs."""

import bz2
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from astrosr.errors import ConfigError, DataError
from astrosr.manifest import cache_dir, data_dir_from, default_manifest, fetch, load_manifest, psf_path, resolve

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "data_manifests" / "bench_v1.yaml"
BENCH_FIELDS = {
    "train": ["M13_blue_0001", "M13_blue_0002", "M13_blue_0003", "M13_blue_0004", "reprojected_sdss_g",
              "reprojected_sdss_r"],
    "val": ["M13_blue_0005", "reprojected_sdss_i"],
    "other_sky": ["gc_2mass_j", "gc_2mass_h", "gc_2mass_k", "M51"],
}


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_bench_v1_lists_every_field_with_true_checksums(data_dir):
    m = load_manifest(BENCH)
    assert m.name == "bench-v1" and m.fields == ["train", "val", "other_sky", "simulated"]
    for field, stems in BENCH_FIELDS.items():
        assert sorted(e.file for e in m.images if e.field == field) == sorted(f"{s}.fits" for s in stems)
    assert [e.file for e in m.images if e.field == "simulated"] == ["synth.fits"]
    assert [(s.field, s.n, s.seed) for s in m.simulate] == [("simulated", 4, 1000)]  # CONTRACTS.md 5
    for entry in m.images + m.psfs:
        assert entry.sha256 == _sha(data_dir / entry.file), entry.file
        assert entry.url.startswith(("http://data.astropy.org/", "https://raw.githubusercontent.com/astropy/"))
    sdss = [e for e in m.images if "sdss" in e.file]
    assert sdss and all(e.url.endswith(".fits.bz2") for e in sdss)
    assert [e.file for e in m.psfs] == ["irac_ch1_flight.fits", "irac_ch2_flight.fits"]


def test_resolve_train_val_in_manifest_order(data_dir):
    sources = resolve(BENCH, data_dir, ["train", "val"])
    assert [(p.name, f) for p, f in sources] == [(f"{s}.fits", f) for f in ("train", "val") for s in BENCH_FIELDS[f]]
    assert all(p.parent == data_dir for p, _ in sources)


def test_resolve_simulated_generates_into_the_cache(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSR_CACHE_DIR", str(tmp_path / "cache"))
    manifest = _mini(tmp_path, data_dir, simulate=[{"field": "sim", "n": 2, "seed": 1000, "size": 128}])
    sources = resolve(manifest, data_dir, ["sim"])
    assert [(p.name, f) for p, f in sources] == [("sim_s1000_000.fits", "sim"), ("sim_s1000_001.fits", "sim")]
    assert all(p.parent == cache_dir() / "simulated" and p.is_file() for p, _ in sources)
    first = _sha(sources[0].path)
    assert _sha(resolve(manifest, data_dir, ["sim"])[0].path) == first  # reused, not rewritten


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTROSR_DATA_DIR", str(tmp_path))
    assert data_dir_from() == tmp_path
    monkeypatch.delenv("ASTROSR_DATA_DIR")
    with pytest.raises(ConfigError, match=r"data_dir: no data directory given and ASTROSR_DATA_DIR is not set"):
        data_dir_from()
    with pytest.raises(ConfigError, match=r"nowhere: data directory not found"):
        data_dir_from(tmp_path / "nowhere")


def _mini(tmp_path, src_dir, *, images=(), psfs=(), simulate=(), name="mini.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "mini", "images": list(images), "psfs": list(psfs),
                                    "simulate": list(simulate)}))
    return path


def _entry(path, field="train", url=None, sha=None):
    return {"file": Path(path).name, "field": field, "url": url or Path(path).resolve().as_uri(),
            "sha256": sha or _sha(path)}


def test_missing_file_names_file_and_url(tmp_path, data_dir):
    manifest = _mini(tmp_path, data_dir, images=[_entry(data_dir / "M51.fits", url="http://example.org/M51.fits")])
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(DataError, match=r"data/M51\.fits: missing; download it from http://example\.org/M51\.fits"):
        resolve(manifest, empty)


def test_checksum_mismatch_names_both_sums(tmp_path, data_dir):
    wrong = "0" * 64
    manifest = _mini(tmp_path, data_dir, images=[_entry(data_dir / "M51.fits", sha=wrong)])
    actual = _sha(data_dir / "M51.fits")
    with pytest.raises(DataError, match=rf"M51\.fits: sha256 {actual} does not match the manifest's {wrong}"):
        resolve(manifest, data_dir)
    assert resolve(manifest, data_dir, verify=False)[0].path.name == "M51.fits"


def test_unknown_field(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=r"field 'test' not in the manifest \(fields: train, val, other_sky"):
        resolve(BENCH, data_dir, ["test"])


def test_psf_path(data_dir):
    m = load_manifest(BENCH)
    assert psf_path(m, "irac_ch2_flight.fits", data_dir) == data_dir / "irac_ch2_flight.fits"
    with pytest.raises(ConfigError, match=r"no PSF named 'hst\.fits'"):
        psf_path(m, "hst.fits", data_dir)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"name": "x", "imagez": []}, r"imagez: unknown key"),
        ({"images": []}, r"name: expected a string"),
        ({"name": "x", "images": {"a": 1}}, r"images: expected a list of entries"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "train", "url": "http://a", "sha256": "12"}]},
         r"images\[0\]\.sha256: expected 64 lowercase hex digits, got '12'"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "train", "url": "http://a"}]},
         r"images\[0\]\.sha256: required key missing"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "train", "url": "http://a", "sha256": "0" * 64,
                                   "size": 3}]}, r"images\[0\]\.size: unknown key"),
        ({"name": "x", "images": [{"file": "../a.fits", "field": "train", "url": "http://a", "sha256": "0" * 64}]},
         r"images\[0\]\.file: expected a bare file name"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "Train!", "url": "http://a", "sha256": "0" * 64}]},
         r"images\[0\]\.field: expected a short lowercase name"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "train", "url": "a.fits", "sha256": "0" * 64}]},
         r"images\[0\]\.url: expected a URL"),
        ({"name": "x", "simulate": [{"field": "sim", "n": "four"}]}, r"simulate\[0\]\.n: expected int, got 'four'"),
        ({"name": "x", "images": [{"file": "a.fits", "field": "t", "url": "http://a", "sha256": "0" * 64}] * 2},
         r"a\.fits: listed more than once"),
    ],
)
def test_bad_manifests_name_the_key(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_manifest(path)


def test_missing_manifest_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: manifest not found"):
        load_manifest(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_manifest(tmp_path / "broken.yaml")


@pytest.fixture
def remote(tmp_path, rng):
    """A 'remote' directory served over file:// URLs: one plain file and one .bz2."""
    src = tmp_path / "remote"
    src.mkdir()
    fits.PrimaryHDU(rng.normal(size=(128, 130)).astype(np.float32)).writeto(src / "a.fits")
    fits.PrimaryHDU(rng.normal(size=(130, 128)).astype(np.float32)).writeto(tmp_path / "b.fits")
    with open(tmp_path / "b.fits", "rb") as f:
        (src / "b.fits.bz2").write_bytes(bz2.compress(f.read()))
    return src


def test_fetch_downloads_decompresses_and_verifies(tmp_path, remote):
    manifest = _mini(tmp_path, remote, images=[
        _entry(remote / "a.fits"),
        _entry(tmp_path / "b.fits", field="val", url=(remote / "b.fits.bz2").as_uri()),
    ], simulate=[{"field": "sim", "n": 1, "seed": 1000, "size": 128}])
    target = tmp_path / "data"
    report = fetch(manifest, target, progress=False)
    assert [(p.name, s) for p, s in report] == [("a.fits", "downloaded"), ("b.fits", "downloaded"),
                                                ("sim_s1000_000.fits", "simulated")]
    assert (target / "b.fits").read_bytes() == (tmp_path / "b.fits").read_bytes()
    assert _sha(target / "a.fits") == _sha(remote / "a.fits")
    again = fetch(manifest, target, progress=False)
    assert {s for _, s in again} == {"present"}
    assert [p.name for p, _ in resolve(manifest, target)] == ["a.fits", "b.fits", "sim_s1000_000.fits"]
    assert sorted(p.name for p in target.iterdir()) == ["a.fits", "b.fits", "sim_s1000_000.fits"]


def test_fetch_bad_checksum_leaves_nothing(tmp_path, remote):
    wrong = "f" * 64
    manifest = _mini(tmp_path, remote, images=[_entry(remote / "a.fits", sha=wrong)])
    target = tmp_path / "data"
    with pytest.raises(DataError, match=rf"data/a\.fits \(downloaded from file://.*\): sha256 [0-9a-f]{{64}} "
                                        rf"does not match the manifest's {wrong}"):
        fetch(manifest, target, progress=False)
    assert list(target.iterdir()) == []


def test_fetch_missing_url_and_bad_bz2(tmp_path, remote):
    gone = _mini(tmp_path, remote, images=[_entry(remote / "a.fits", url=(remote / "gone.fits").as_uri())])
    with pytest.raises(DataError, match=r"a\.fits: download from file://.*gone\.fits failed"):
        fetch(gone, tmp_path / "data", progress=False)
    shutil.copy(remote / "a.fits", remote / "fake.fits.bz2")
    fake = _mini(tmp_path, remote, images=[_entry(remote / "a.fits", url=(remote / "fake.fits.bz2").as_uri())],
                 name="fake.yaml")
    with pytest.raises(DataError, match=r"a\.fits: file://.*fake\.fits\.bz2 is not valid bzip2 data"):
        fetch(fake, tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_fetch_existing_corrupt_file_is_reported(tmp_path, remote):
    manifest = _mini(tmp_path, remote, images=[_entry(remote / "a.fits")])
    target = tmp_path / "data"
    target.mkdir()
    (target / "a.fits").write_bytes(b"corrupt")
    with pytest.raises(DataError, match=r"a\.fits: sha256 [0-9a-f]{64} does not match"):
        fetch(manifest, target, progress=False)


def test_fetch_into_read_only_directory(tmp_path, remote, monkeypatch):
    import astrosr.manifest as manifest_module

    def denied(entry, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(manifest_module, "_download", denied)  # tests run as root: chmod would not stop them
    manifest = _mini(tmp_path, remote, images=[_entry(remote / "a.fits")])
    with pytest.raises(DataError, match=r"ro/a\.fits: cannot write \(Permission denied\)"):
        fetch(manifest, tmp_path / "ro", progress=False)


def test_default_manifest_is_found_from_any_directory(tmp_path, monkeypatch):
    # a new user runs `astrosr evaluate --field val` outside the checkout
    monkeypatch.chdir(tmp_path)
    found = default_manifest()
    assert found.is_absolute() and found == Path(__file__).resolve().parents[1] / "data_manifests" / "bench_v1.yaml"
    local = tmp_path / "data_manifests" / "bench_v1.yaml"
    local.parent.mkdir()
    local.write_text("name: mine\n")
    assert default_manifest().resolve() == local  # the current directory's own manifest wins


def test_an_unquoted_numeric_sha256_says_to_quote_it(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: x\nimages:\n  - {file: a.fits, field: train, url: http://x/a.fits, sha256: " + "0" * 64 + "}\n")
    with pytest.raises(ConfigError, match=r"images\[0\]\.sha256: YAML read 0 as a number; write the sum as a quoted string"):
        load_manifest(path)


def test_a_relative_manifest_path_works_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_manifest("data_manifests/bench_v1.yaml").name == "bench-v1"  # the checkout's, found from elsewhere
    with pytest.raises(ConfigError, match=r"nope/m\.yaml: manifest not found \(looked for .*nope/m\.yaml"):
        load_manifest("nope/m.yaml")
