"""Output helpers: atomic writes, output directories and the output-is-an-input guard."""

import os

import pytest

from astrosr.errors import InputError
from astrosr.files import atomic_path, check_not_input, make_dir


def test_make_dir_creates_parents_and_names_a_file_in_the_way(tmp_path):
    assert make_dir(tmp_path / "a" / "b").is_dir()
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: is a file, not a directory"):
        make_dir(blocker)
    with pytest.raises(InputError, match=r"notes\.txt/sub: cannot create the output directory \(Not a directory\)"):
        make_dir(blocker / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_make_dir_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(InputError, match=r"ro: output directory is not writable"):
        make_dir(ro)


def test_atomic_path_under_a_file_is_one_line_input_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"afile: is a file, not a directory"):
        with atomic_path(blocker / "out.h5"):
            pytest.fail("must not get here")
    assert blocker.read_text() == "x"


def test_check_not_input_sees_the_same_file_under_another_name(tmp_path):
    src = tmp_path / "img.fits"
    src.write_bytes(b"data")
    link = tmp_path / "link.fits"
    link.symlink_to(src)
    check_not_input(tmp_path / "new.h5", [src])  # a new output is fine
    check_not_input(tmp_path / "other", [src, tmp_path / "missing.fits"])
    with pytest.raises(InputError, match=r"link\.fits: output is also an input \(.*img\.fits\)"):
        check_not_input(link, [src])
