"""Pipeline files for ``astrosr run``: one validated dataclass section per stage.

A pipeline YAML has ``name``, ``description``, ``run_dir`` and one section per
stage; stages run in the fixed order of :data:`STAGES` and an absent section
is not run::

    run_dir: runs/quickstart
    simulate:                       # set name -> SimulateSet
      train: {n: 4, seed: 0, size: 256, field: train}
      test:  {n: 2, seed: 1000, size: 256}        # no field: not prepared
    data: {manifest: data_manifests/bench_v1.yaml, prepare_fields: [train, val]}
    prepare: {psf: {fwhm: "2.5:5.5"}}   # PrepareOptions keys (as ``astrosr prepare --config``)
    train:                          # model name -> train config (inline, a YAML path,
      resvae: {model: resvae, max_steps: 300}    #  or {config: PATH, ...overrides})
    evaluate: {models: [resvae], images: [test], psf: {fwhm: 4}}   # EvaluateOptions keys
    deblur: {model: resvae, inputs: [test]}

Every section is validated on load by :func:`astrosr.config.from_dict`
(errors name ``file: section.key``). ``models`` name train-stage models
(their ``best.pt``), weight files or ``default``; ``images`` / ``inputs`` name
simulate sets or files. Relative paths are taken from the current directory,
else from the pipeline file's directory or its parent.

Kept together as one module: the stage sections, the loader and the checks
of the references between sections are one file format.
"""

from __future__ import annotations

import dataclasses
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import from_dict, load_yaml, to_dict
from .errors import ConfigError
from .deblur import DeblurOptions
from .evaluate import EvaluateOptions
from .prepare import PrepareOptions
from .simulate import SimulateOptions

if TYPE_CHECKING:
    import os

__all__ = ["STAGES", "SimulateSet", "DataStage", "EvaluateStage", "DeblurStage", "Pipeline", "load_pipeline",
           "find_path", "path_exists"]

STAGES = ("simulate", "data", "prepare", "train", "evaluate", "deblur")
TOP_KEYS = ("name", "description", "run_dir")


@dataclass(frozen=True)
class SimulateSet(SimulateOptions):
    """One set of simulated images: :class:`astrosr.simulate.SimulateOptions` plus the field they enter.

    Parameters
    ----------
    field : str or None
        Field these images enter the pairs file with (``train``, ``val``...);
        None keeps them out of prepare (test images for evaluate / deblur).
        Seeds >= 1000 are the simulated test field and enter no field.

    Examples
    --------
    >>> from astrosr.pipeline_config import SimulateSet
    >>> SimulateSet(n=2, seed=1000, size=256).field is None
    True
    >>> SimulateSet(seed=1000, field="train")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: seed 1000 >= 1000 is the simulated test field; it never trains
    """

    field: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.field is not None and self.seed >= 1000:
            raise ConfigError(f"seed {self.seed} >= 1000 is the simulated test field; it never trains")


@dataclass
class DataStage:
    """Check (or fetch) a manifest's files in the data directory.

    Parameters
    ----------
    manifest : str
    fields : list of str or None
        Fields to check / fetch (None: all of the manifest's).
    prepare_fields : list of str
        Manifest fields that go into the pairs file.
    fetch : bool
        Download missing files (``astrosr fetch``) instead of failing.
    data_dir : str or None
        Default ``$ASTROSR_DATA_DIR`` (``astrosr run --data-dir`` overrides).

    Examples
    --------
    >>> from astrosr.config import from_dict
    >>> from astrosr.pipeline_config import DataStage
    >>> from_dict(DataStage, {"fields": ["val"]}, where="data").prepare_fields
    ['train', 'val']
    >>> from_dict(DataStage, {"feilds": ["val"]}, where="data")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: data.feilds: unknown key (known: data_dir, fetch, fields, manifest, prepare_fields)
    """

    manifest: str = "data_manifests/bench_v1.yaml"
    fields: list[str] | None = None
    prepare_fields: list[str] = field(default_factory=lambda: ["train", "val"])
    fetch: bool = False
    data_dir: str | None = None


@dataclass(frozen=True)
class EvaluateStage(EvaluateOptions):
    """The ``evaluate:`` section: :class:`astrosr.evaluate.EvaluateOptions` plus robustness runs.

    ``models`` name train-stage models (their ``best.pt``), weight files or
    ``'default'``; ``images`` name simulate sets or files; ``fields`` take
    the data section's manifest and data directory.

    Parameters
    ----------
    extra_fwhm : list of float
        Further runs with the PSF's shape at these FWHMs (robustness),
        written to ``evaluate_fwhm<F>/``.

    Examples
    --------
    >>> from astrosr.config import from_dict
    >>> from astrosr.pipeline_config import EvaluateStage
    >>> stage = from_dict(EvaluateStage, {"models": ["default"], "images": ["test"], "extra_fwhm": [3, 5]},
    ...                   where="evaluate")
    >>> stage.extra_fwhm, stage.options(images=["test_000.fits"]).images
    ([3.0, 5.0], ['test_000.fits'])
    >>> EvaluateStage(models=["default"])
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: fields, images: give exactly one of them
    """

    models: list[str] = field(default_factory=list)
    extra_fwhm: list[float] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if bool(self.fields) == bool(self.images):
            raise ConfigError("fields, images: give exactly one of them")
        if any(not f > 0 for f in self.extra_fwhm):
            raise ConfigError(f"extra_fwhm: every FWHM must be > 0, got {self.extra_fwhm}")
        if self.extra_fwhm and self.psf.shape not in ("moffat", "gaussian"):
            raise ConfigError(f"extra_fwhm: needs a Moffat or Gaussian psf, got shape {self.psf.shape!r}")

    def options(self, **keys) -> EvaluateOptions:
        """The :class:`EvaluateOptions` of one run, with resolved references in ``keys``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvaluateOptions)}
        return EvaluateOptions(**{**values, **keys})


@dataclass(frozen=True)
class DeblurStage(DeblurOptions):
    """The ``deblur:`` section: :class:`astrosr.deblur.DeblurOptions` plus its inputs (outputs are always replaced).

    Parameters
    ----------
    inputs : list of str
        Simulate set names, files, directories or globs.
    model : str or None
        Train-stage model name, weight file or ``'default'`` (None: the first
        train-stage model, else ``'default'``).
    degrade : bool
        Blur the (sharp, e.g. simulated) inputs first with this PSF and
        bench-v1 noise, into ``deblur/blurred/``, and draw an ORI / BLU / SR
        panel per image: a demonstration with the truth at hand.

    Examples
    --------
    >>> from astrosr.pipeline_config import DeblurStage
    >>> from astrosr.psf import PSF
    >>> stage = DeblurStage(inputs=["sky"], degrade=True, psf=PSF(fwhm=4.0), target_fwhm=0.0)
    >>> stage.model is None, stage.options(model="default").model
    (True, 'default')
    >>> DeblurStage()
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: inputs: at least one input (a simulate set or a file)
    """

    inputs: list[str] = field(default_factory=list)
    model: str | None = None
    degrade: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not self.inputs:
            raise ConfigError("inputs: at least one input (a simulate set or a file)")
        if self.degrade and self.psf.shape == "auto":
            raise ConfigError("psf: degrade: true blurs the inputs with the PSF, so it must be stated (psf: {fwhm: 4}), "
                              "not 'auto'")

    def options(self, **keys) -> DeblurOptions:
        """The :class:`DeblurOptions` of the run, with resolved references in ``keys``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DeblurOptions)}
        return DeblurOptions(**{**values, **keys})


@dataclass
class Pipeline:
    """A validated pipeline file; stage attributes are None (or empty) when absent.

    Built by :func:`load_pipeline`. ``simulate`` maps set names to
    :class:`SimulateSet`, ``train`` model names to
    :class:`astrosr.train_config.TrainConfig`.

    Examples
    --------
    >>> from pathlib import Path
    >>> import astrosr
    >>> from astrosr.pipeline_config import load_pipeline
    >>> pipeline = load_pipeline(Path(astrosr.__file__).resolve().parents[1] / "pipelines" / "quickstart.yaml")
    >>> pipeline.data is None, list(pipeline.train), pipeline.deblur.inputs
    (True, ['resvae'], ['sky'])
    >>> sorted(pipeline.to_dict())
    ['deblur', 'description', 'evaluate', 'name', 'prepare', 'run_dir', 'simulate', 'train']
    """

    path: Path
    name: str
    description: str | None
    run_dir: str | None
    simulate: dict = field(default_factory=dict)
    data: DataStage | None = None
    prepare: PrepareOptions | None = None
    train: dict = field(default_factory=dict)
    evaluate: EvaluateStage | None = None
    deblur: DeblurStage | None = None

    def to_dict(self) -> dict[str, Any]:
        """The validated configuration as plain data (written to ``RUN/pipeline.yaml``)."""
        out = {"name": self.name, "description": self.description, "run_dir": self.run_dir}
        for stage in STAGES:
            value = getattr(self, stage)
            if isinstance(value, dict):
                value = {k: to_dict(v) for k, v in value.items()} or None
            elif value is not None:
                value = to_dict(value)
            out[stage] = value
        return {k: v for k, v in out.items() if v is not None}


# --- loading --------------------------------------------------------------------


def find_path(value: str | os.PathLike, base: Path, key: str) -> Path:
    """An existing path named in a pipeline file.

    Parameters
    ----------
    value : str
        Absolute, or relative to the current directory, else to ``base`` (the
        pipeline file's directory) or its parent (the repository root for
        ``pipelines/*.yaml``).
    base : Path
    key : str
        The config key, for the error message.

    Returns
    -------
    Path
        ``value`` itself when absolute or found from the current directory,
        else joined to the directory it was found in.

    Raises
    ------
    ConfigError
        Found nowhere.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.pipeline_config import find_path
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "pipelines").mkdir()
    >>> _ = (root / "bench.yaml").write_text("")
    >>> find_path("bench.yaml", root / "pipelines", "data.manifest") == root / "bench.yaml"
    True
    >>> find_path("missing.yaml", root / "pipelines", "data.manifest")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: data.manifest: missing.yaml not found (relative paths: from the current directory ...)
    """
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    for root in (base, base.parent):
        if (root / path).exists():
            return root / path
    raise ConfigError(f"{key}: {value} not found (relative paths: from the current directory or {base})")


def _train_config(name, value, base):
    from .train_config import load_config

    key = f"train.{name}"
    if isinstance(value, str):
        return load_config(find_path(value, base, key))
    if isinstance(value, dict) and "config" in value:
        if not isinstance(value["config"], str):
            raise ConfigError(f"{key}.config: expected a path, got {value['config']!r}")
        rest = {k: v for k, v in value.items() if k != "config"}
        return load_config(find_path(value["config"], base, f"{key}.config"), rest)
    from .train_config import TrainConfig

    return from_dict(TrainConfig, value, where=key)


def _mapping(data, key):
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: expected a mapping of names, got {value!r}")
    return value


def path_exists(value: str, base: Path) -> bool:
    """Whether ``value`` is an existing path (as :func:`find_path` looks) or a glob that matches files.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.pipeline_config import path_exists
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "m51.fits").write_bytes(b"")
    >>> path_exists("m51.fits", root), path_exists(str(root / "*.fits"), root), path_exists("m31.fits", root)
    (True, True, False)
    """
    try:
        find_path(value, base, value)
        return True
    except ConfigError:
        return bool(glob.glob(value))


def _check_refs(pipeline, base):
    """Model and image names must be train models / simulate sets, or existing files."""

    def check(key, values, names, kind):
        # 'default' is the shipped model, a name only a model reference may take
        allowed = set(names) | ({"default"} if kind == "train model" else set())
        for i, v in enumerate(values):
            if v not in allowed and not path_exists(v, base):
                where = key if key == "deblur.model" else f"{key}[{i}]"
                raise ConfigError(f"{where}: {v!r} is neither a {kind} ({', '.join(names) or 'none'}) "
                                  "nor an existing file")

    ev, db = pipeline.evaluate, pipeline.deblur
    if ev is not None:
        check("evaluate.models", ev.models, list(pipeline.train), "train model")
        check("evaluate.images", ev.images, list(pipeline.simulate), "simulate set")
        if ev.fields and pipeline.data is None:
            raise ConfigError("evaluate.fields: needs a data section (its manifest and data directory)")
    if db is not None:
        check("deblur.model", [db.model] if db.model else [], list(pipeline.train), "train model")
        check("deblur.inputs", db.inputs, list(pipeline.simulate), "simulate set")
    if pipeline.train and pipeline.prepare is None:
        raise ConfigError("train: needs a prepare section (the pairs file it trains on)")
    if pipeline.prepare is not None and pipeline.data is None and not any(s.field for s in pipeline.simulate.values()):
        raise ConfigError("prepare: no inputs (a data section, or simulate sets with a field)")


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and validate a pipeline YAML.

    Parameters
    ----------
    path : str or Path
        The pipeline file; relative paths inside it are found as
        :func:`find_path` does.

    Returns
    -------
    Pipeline

    Raises
    ------
    ConfigError
        An unknown stage, unknown key or wrong type (named ``file: section.key``),
        or a reference to a model / simulate set / file that does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import astrosr
    >>> from astrosr.pipeline_config import load_pipeline
    >>> repo = Path(astrosr.__file__).resolve().parents[1]
    >>> pipeline = load_pipeline(repo / "pipelines" / "quickstart.yaml")
    >>> pipeline.name, list(pipeline.simulate), pipeline.train["resvae"].max_steps
    ('quickstart', ['train', 'val', 'test', 'sky'], 500)
    >>> bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    >>> _ = bad.write_text("simulate:\\n  test: {n: 2, seed: 1000}\\nprepare: {nosie: 2}\\n")
    >>> load_pipeline(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: .../bad.yaml: prepare.nosie: unknown key (known: compression, declared_kernel, declared_psf, ...)
    """
    path = Path(path)
    data = load_yaml(path)
    base = path.resolve().parent
    unknown = [k for k in data if k not in STAGES + TOP_KEYS]
    try:
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown stage (stages: {', '.join(STAGES)}; also {', '.join(TOP_KEYS)})")
        for key in TOP_KEYS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ConfigError(f"{key}: expected str, got {data[key]!r}")
        pipeline = Pipeline(path=path, name=data.get("name") or path.stem, description=data.get("description"),
                            run_dir=data.get("run_dir"))
        pipeline.simulate = {k: from_dict(SimulateSet, v, where=f"simulate.{k}")
                             for k, v in _mapping(data, "simulate").items()}
        if "data" in data:
            pipeline.data = from_dict(DataStage, data["data"], where="data")
            from .manifest import load_manifest

            load_manifest(find_path(pipeline.data.manifest, base, "data.manifest"))
        if "prepare" in data:
            pipeline.prepare = from_dict(PrepareOptions, data["prepare"], where="prepare")
        pipeline.train = {k: _train_config(k, v, base) for k, v in _mapping(data, "train").items()}
        if "evaluate" in data:
            pipeline.evaluate = from_dict(EvaluateStage, data["evaluate"], where="evaluate")
        if "deblur" in data:
            pipeline.deblur = from_dict(DeblurStage, data["deblur"], where="deblur")
        _check_refs(pipeline, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return pipeline
