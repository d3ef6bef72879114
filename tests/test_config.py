"""Stage options from mappings: unknown keys, wrong types and bad values are errors that name the key."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from astrosr.config import check_options, from_dict, option, replace, to_dict
from astrosr.deblur import DeblurOptions
from astrosr.errors import ConfigError
from astrosr.evaluate import EvaluateOptions
from astrosr.psf import PSF


@dataclass(frozen=True)
class Demo:
    samples: int = option(0, minimum=0, help="Posterior draws.")
    mode: str = option("fast", choices=("fast", "slow"), help="How.")
    where: str | None = option(None, help="A path.")
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_options(self)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sample": 1}, r"^demo\.sample: unknown key \(known: mode, names, samples, where\)$"),
        ({"samples": "4"}, r"^demo\.samples: expected int, got '4'$"),
        ({"samples": True}, r"^demo\.samples: expected int, got True$"),
        ({"samples": -1}, r"^demo\.samples: must be >= 0, got -1$"),
        ({"mode": "warp"}, r"^demo\.mode: expected one of fast, slow, got 'warp'$"),
        ({"names": "a"}, r"^demo\.names: expected a list, got 'a'$"),
        ({"names": ["a", 2]}, r"^demo\.names\[1\]: expected str, got 2$"),
    ],
)
def test_errors_name_the_key_in_its_section(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Demo, data, where="demo")


def test_values_paths_and_replace():
    demo = from_dict(Demo, {"samples": 4, "where": Path("/tmp/x"), "names": ("a", "b")})
    assert demo == Demo(samples=4, where="/tmp/x", names=["a", "b"])
    assert replace(demo, samples=8, mode=None) == Demo(samples=8, where="/tmp/x", names=["a", "b"])
    with pytest.raises(ConfigError, match=r"^samples: must be >= 0, got -2$"):
        replace(demo, samples=-2)
    assert to_dict(demo)["names"] == ["a", "b"]


def test_a_nested_psf_section_is_located():
    assert from_dict(DeblurOptions, {"psf": {"shape": "gaussian", "fwhm": 2.5}}).psf == PSF(shape="gaussian", fwhm=2.5)
    with pytest.raises(ConfigError, match=r"^deblur\.psf\.fwhm: expected 0 < lo <= hi"):
        from_dict(DeblurOptions, {"psf": {"fwhm": -1.0}}, where="deblur")
    with pytest.raises(ConfigError, match=r"^psf\.fwhm: 2:4 is a range; an image has one PSF \(ranges are for prepare\)$"):
        DeblurOptions(psf=PSF(fwhm="2:4"))
    with pytest.raises(ConfigError, match=r"^evaluate\.samples: must be >= 0, got -1$"):
        from_dict(EvaluateOptions, {"samples": -1}, where="evaluate")


def test_bad_yaml_names_the_line_and_column(tmp_path):
    from astrosr.config import load_yaml

    bad = tmp_path / "bad_syntax.yaml"
    bad.write_text("train:\n  lr: [0.1, 0.2\n  batch: 4\n")
    with pytest.raises(ConfigError, match=r"bad_syntax\.yaml: not valid YAML \(line 3, column 8: expected ',' or ']'"):
        load_yaml(bad)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a text file"):
        load_yaml(binary)
