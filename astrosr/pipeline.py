"""``astrosr run PIPELINE.yaml``: simulate, data, prepare, train, evaluate and deblur in one run directory.

A pipeline YAML has ``name``, ``description``, ``run_dir`` and one section per
stage; stages run in the fixed order of :data:`STAGES` and an absent section
is not run::

    run_dir: runs/quickstart
    simulate:                       # set name -> SimulateSet
      train: {n: 4, seed: 0, size: 256, field: train}
      test:  {n: 2, seed: 1000, size: 256}        # no field: not prepared
    data: {manifest: data_manifests/bench_v1.yaml, prepare_fields: [train, val]}
    prepare: {psf_fwhm: "2.5:5.5"}  # PrepareConfig keys (as ``astrosr prepare --config``)
    train:                          # model name -> train config (inline, a YAML path,
      resvae: {model: resvae, max_steps: 300}    #  or {config: PATH, ...overrides})
    evaluate: {models: [resvae], images: [test]}
    deblur: {model: resvae, inputs: [test]}

Every section is validated on load by :func:`astrosr.config.from_dict`
(errors name ``section.key``). ``models`` name train-stage models (their
``best.pt``) or weight files; ``images`` / ``inputs`` name simulate sets or
files. Relative paths are taken from the current directory, else from the
pipeline file's directory or its parent.

Outputs go under the run directory: ``simulate/<set>/``,
``prepare/pairs.h5``, ``train/<model>/``, ``evaluate/`` (``evaluate_fwhm<F>/``
for ``extra_fwhm``), ``deblur/``, plus ``pipeline.yaml`` (the validated
config), ``stages.json`` (finished stages with the hash of their config and of
everything upstream) and ``summary.md`` / ``summary.json``. A rerun skips a
stage whose hash is unchanged and whose outputs exist; a changed stage reruns,
and so does everything after it.
"""

import dataclasses
import datetime
import glob
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import __version__
from .config import from_dict, load_yaml, to_dict
from .errors import ConfigError, DataError
from .files import atomic_path, sha256_file
from .prepare import PrepareConfig

__all__ = ["STAGES", "SimulateSet", "DataStage", "EvaluateStage", "DeblurStage", "Pipeline", "load_pipeline",
           "run_pipeline"]

STAGES = ("simulate", "data", "prepare", "train", "evaluate", "deblur")
TOP_KEYS = ("name", "description", "run_dir")


@dataclass
class SimulateSet:
    """``n`` simulated images of ``seed`` (:func:`astrosr.simulate.simulate_fields`).

    Parameters
    ----------
    n, seed, size : int
    field : str or None
        Field these images enter the pairs file with (``train``, ``val``...);
        None keeps them out of prepare (test images for evaluate / deblur).
        Seeds >= 1000 are the simulated test field and never train.
    """

    n: int = 4
    seed: int = 0
    size: int = 512
    field: str | None = None

    def __post_init__(self):
        if self.n < 1 or self.seed < 0 or self.size < 128:
            raise ConfigError(f"need n >= 1, seed >= 0 and size >= 128, got {self.n}, {self.seed}, {self.size}")
        if self.field == "train" and self.seed >= 1000:
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
    """

    manifest: str = "data_manifests/bench_v1.yaml"
    fields: list[str] | None = None
    prepare_fields: list[str] = field(default_factory=lambda: ["train", "val"])
    fetch: bool = False
    data_dir: str | None = None


@dataclass
class EvaluateStage:
    """Options of :func:`astrosr.evaluate.evaluate` (one run per PSF).

    Parameters
    ----------
    models : list of str
        Train-stage model names, weight files or ``'default'``.
    fields : list of str
        Manifest fields (needs a ``data`` section); exclusive with ``images``.
    images : list of str
        Simulate set names or FITS files.
    psf_shape, psf_fwhm, psf_beta, psf_file
        The true PSF (CONTRACTS.md 1); default bench-v1's.
    extra_fwhm : list of float
        Further runs with a Moffat/Gaussian of these FWHMs (robustness),
        written to ``evaluate_fwhm<F>/``.
    consistency : bool
    panels : int
    threads : int or None
    device : str
    """

    models: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    psf_shape: str = "moffat"
    psf_fwhm: float = 4.0
    psf_beta: float = 3.0
    psf_file: str | None = None
    extra_fwhm: list[float] = field(default_factory=list)
    consistency: bool = True
    panels: int = 3
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        if bool(self.fields) == bool(self.images):
            raise ConfigError("give exactly one of fields and images")


@dataclass
class DeblurStage:
    """Options of :func:`astrosr.deblur.deblur_batch`.

    Parameters
    ----------
    inputs : list of str
        Simulate set names, files, directories or globs.
    model : str or None
        Train-stage model name, weight file or ``'default'`` (None: the first
        train-stage model, else ``'default'``).
    psf_shape, psf_fwhm, psf_beta, psf_file
        PSF of the inputs.
    consistency, overlap, samples, compress, device
    degrade : bool
        Blur the (sharp, e.g. simulated) inputs first with this PSF and
        bench-v1 noise, into ``deblur/blurred/``, and draw an ORI / BLU / SR
        panel per image: a demonstration with the truth at hand.
    """

    inputs: list[str] = field(default_factory=list)
    model: str | None = None
    psf_shape: str = "moffat"
    psf_fwhm: float = 4.0
    psf_beta: float = 3.0
    psf_file: str | None = None
    consistency: bool = True
    overlap: int = 32
    samples: int = 0
    compress: bool = False
    device: str = "auto"
    degrade: bool = False

    def __post_init__(self):
        if not self.inputs:
            raise ConfigError("inputs: at least one input (a simulate set or a file)")


@dataclass
class Pipeline:
    """A validated pipeline file; stage attributes are None (or empty) when absent."""

    path: Path
    name: str
    description: str | None
    run_dir: str | None
    simulate: dict = field(default_factory=dict)
    data: DataStage | None = None
    prepare: PrepareConfig | None = None
    train: dict = field(default_factory=dict)
    evaluate: EvaluateStage | None = None
    deblur: DeblurStage | None = None

    def to_dict(self):
        """The validated configuration as plain data (written to ``RUN/pipeline.yaml``)."""
        out = {"name": self.name, "description": self.description, "run_dir": self.run_dir}
        if self.simulate:
            out["simulate"] = {k: to_dict(v) for k, v in self.simulate.items()}
        for stage in ("data", "prepare", "evaluate", "deblur"):
            if getattr(self, stage) is not None:
                out[stage] = to_dict(getattr(self, stage))
        if self.train:
            out["train"] = {k: to_dict(v) for k, v in self.train.items()}
        return {k: v for k, v in out.items() if v is not None}


# --- loading --------------------------------------------------------------------


def _find(value, base, key):
    """A relative path: from the current directory, else the pipeline's directory or its parent."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    for root in (base, base.parent):
        if (root / path).exists():
            return root / path
    raise ConfigError(f"{key}: {value} not found (relative paths: from the current directory or {base})")


def _train_config(name, value, base):
    from .train import load_config

    key = f"train.{name}"
    if isinstance(value, str):
        return load_config(_find(value, base, key))
    if isinstance(value, dict) and "config" in value:
        if not isinstance(value["config"], str):
            raise ConfigError(f"{key}.config: expected a path, got {value['config']!r}")
        rest = {k: v for k, v in value.items() if k != "config"}
        return load_config(_find(value["config"], base, f"{key}.config"), rest)
    from .train import TrainConfig

    return from_dict(TrainConfig, value, where=key)


def _mapping(data, key):
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: expected a mapping of names, got {value!r}")
    return value


def _exists(value, base):
    """True when ``value`` is an existing path (see :func:`_find`) or a glob that matches."""
    try:
        _find(value, base, value)
        return True
    except ConfigError:
        return bool(glob.glob(value))


def _check_refs(pipeline, base):
    """Model and image names must be train models / simulate sets, or existing files."""

    def check(key, values, names, kind):
        # 'default' is the shipped model, a name only a model reference may take
        allowed = set(names) | ({"default"} if kind == "train model" else set())
        for i, v in enumerate(values):
            if v not in allowed and not _exists(v, base):
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


def load_pipeline(path):
    """Read and validate a pipeline YAML.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Pipeline

    Raises
    ------
    ConfigError
        An unknown stage, unknown key or wrong type (named ``file: section.key``),
        or a reference to a model / simulate set / file that does not exist.
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

            load_manifest(_find(pipeline.data.manifest, base, "data.manifest"))
        if "prepare" in data:
            pipeline.prepare = from_dict(PrepareConfig, data["prepare"], where="prepare")
        pipeline.train = {k: _train_config(k, v, base) for k, v in _mapping(data, "train").items()}
        if "evaluate" in data:
            pipeline.evaluate = from_dict(EvaluateStage, data["evaluate"], where="evaluate")
        if "deblur" in data:
            pipeline.deblur = from_dict(DeblurStage, data["deblur"], where="deblur")
        _check_refs(pipeline, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return pipeline


# --- running --------------------------------------------------------------------


def _hash(*parts):
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Records:
    """``RUN/stages.json``: finished stages, their hash, seconds and outputs."""

    def __init__(self, run_dir, force):
        self.path = run_dir / "stages.json"
        self.stages = {}
        if self.path.is_file() and not force:
            try:
                self.stages = json.loads(self.path.read_text()).get("stages", {})
            except (json.JSONDecodeError, AttributeError):
                self.stages = {}  # a damaged record only costs a rerun

    def done(self, stage, digest):
        rec = self.stages.get(stage)
        return bool(rec and rec.get("hash") == digest and all(Path(p).exists() for p in rec.get("outputs", [])))

    def record(self, stage, digest, seconds, outputs):
        self.stages[stage] = {"hash": digest, "seconds": round(seconds, 3), "outputs": [str(p) for p in outputs],
                              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with atomic_path(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"astrosr_version": __version__, "stages": self.stages}, indent=2) + "\n")


def _psf(shape, fwhm, beta, psf_file):
    from .degrade import PSF

    return PSF(shape="file", path=psf_file) if psf_file else PSF(shape=shape, fwhm=fwhm, beta=beta)


def _fresh(path):
    """Remove a stage's own output directory inside the run directory before it reruns."""
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Runner:
    def __init__(self, pipeline, run_dir, *, max_steps, force, data_dir, console):
        self.p, self.run, self.console = pipeline, run_dir, console
        self.base = pipeline.path.resolve().parent
        self.max_steps, self.data_dir = max_steps, data_dir
        self.records = _Records(run_dir, force)
        self.rows = []

    # references -----------------------------------------------------------
    def sim_files(self, name):
        from .simulate import sim_name

        s = self.p.simulate[name]
        return [self.run / "simulate" / name / sim_name(s.seed, i) for i in range(s.n)]

    def files(self, refs):
        out = []
        for ref in refs:
            if ref in self.p.simulate:
                out += self.sim_files(ref)
            elif _exists(ref, self.base) and not glob.glob(ref):
                out.append(_find(ref, self.base, ref))
            else:
                out += sorted(glob.glob(ref))
        return [str(p) for p in out]

    def model(self, ref):
        if ref in self.p.train:
            return self.run / "train" / ref / "best.pt"
        return ref if ref == "default" else _find(ref, self.base, ref)

    def manifest(self):
        return _find(self.p.data.manifest, self.base, "data.manifest")

    def data_directory(self):
        return self.data_dir or self.p.data.data_dir

    # stage driver ------------------------------------------------------------
    def stage(self, name, digest, fn):
        self.console.rule(f"[bold]{name}", align="left")
        if self.records.done(name, digest):
            rec = self.records.stages[name]
            self.console.print(f"[yellow]skipped[/]: done before with the same config ({rec['seconds']:.1f} s)")
            self.rows.append({"stage": name, "status": "skipped", "seconds": 0.0,
                              "output": rec["outputs"][0] if rec["outputs"] else ""})
            return
        t0 = time.perf_counter()
        outputs = [Path(p) for p in fn()]
        seconds = time.perf_counter() - t0
        self.records.record(name, digest, seconds, outputs)
        main = str(outputs[0]) if outputs else ""
        self.console.print(f"[green]done[/] in {seconds:.1f} s -> {main}")
        self.rows.append({"stage": name, "status": "done", "seconds": seconds, "output": main})

    # stages ------------------------------------------------------------------
    def simulate(self, name, s):
        from .simulate import simulate_fields

        out = _fresh(self.run / "simulate" / name)
        return simulate_fields(out, n=s.n, seed=s.seed, size=s.size, overwrite=True, progress=self.console.is_terminal)

    def check_data(self):
        from .manifest import fetch, resolve

        d = self.p.data
        if d.fetch:
            fetch(self.manifest(), self.data_directory(), fields=d.fields, progress=self.console.is_terminal)
        sources = resolve(self.manifest(), self.data_directory(), d.fields)
        with atomic_path(self.run / "data.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps({"manifest": str(self.manifest()), "data_dir": str(Path(sources[0].path).parent)
                                       if sources else None, "files": [[str(p), f] for p, f in sources]}, indent=2))
        self.console.print(f"{len(sources)} files checked (sha256) for fields "
                           f"{', '.join(d.fields or sorted({f for _, f in sources}))}")
        return [self.run / "data.json"]

    def prepare(self):
        from .manifest import resolve
        from .prepare import prepare_pairs

        sources = []
        if self.p.data is not None and self.p.data.prepare_fields:
            sources += resolve(self.manifest(), self.data_directory(), self.p.data.prepare_fields)
        for name, s in self.p.simulate.items():
            if s.field:
                sources += [(p, s.field) for p in self.sim_files(name)]
        out = self.run / "prepare" / "pairs.h5"
        result = prepare_pairs(sources, out, config=self.p.prepare, overwrite=True, progress=self.console.is_terminal)
        self.console.print(f"{result['n_tiles']} tile pairs from {result['n_images']} images: "
                           + ", ".join(f"{k} {v}" for k, v in result["tiles_per_field"].items()))
        return [out]

    def train(self, name, cfg):
        from .train import train

        out = self.run / "train" / name
        cfg = dataclasses.replace(cfg, progress=cfg.progress and self.console.is_terminal)
        pairs = self.run / "prepare" / "pairs.h5"
        resume = (out / "last.pt").is_file() and _same_run(out, pairs, cfg)
        if not resume:
            _fresh(out)
        summary = train(pairs, cfg, out, resume=resume)
        best = summary.get("best") or {}
        shown = ", ".join(f"{k} {best[k]:.4g}" for k in ("ssim", "mse", "flux_err", "tile_ssim", "tile_mse")
                          if isinstance(best.get(k), float))
        self.console.print(f"{name}: {summary['steps']} steps in {summary['seconds']:.0f} s on {summary['device']}"
                           f"{'; best ' + shown if shown else ''}")
        return [out / "best.pt", out / "last.pt", out / "metrics.csv", out / "summary.json"]

    def evaluate(self, out, psf):
        from .evaluate import evaluate

        e = self.p.evaluate
        evaluate(out=out, fields=e.fields or None, images=self.files(e.images) or None,
                 models=[str(self.model(m)) for m in e.models],
                 manifest=str(self.manifest()) if e.fields else None,
                 data_dir=self.data_directory() if self.p.data else None, psf=psf, consistency=e.consistency,
                 threads=e.threads, device=e.device, panels=e.panels, console=self.console,
                 progress=self.console.is_terminal)
        return [out / "report.md", out / "summary.json", out / "metrics.csv"]

    def deblur(self):
        from .deblur import deblur_batch

        d = self.p.deblur
        out = _fresh(self.run / "deblur")
        model = d.model or (next(iter(self.p.train)) if self.p.train else "default")
        psf = _psf(d.psf_shape, d.psf_fwhm, d.psf_beta, d.psf_file)
        inputs = self.files(d.inputs)
        if d.degrade:
            truths, inputs = inputs, [_blurred(p, psf, out / "blurred") for p in inputs]
        results = deblur_batch(inputs, out, model_path=str(self.model(model)), psf=psf, consistency=d.consistency,
                               overlap=d.overlap, samples=d.samples, compress=d.compress, overwrite=True,
                               device=d.device)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise DataError(f"deblur: {failed[0].input}: {failed[0].reason}")
        outputs = [r.output for r in results]
        for r in results:
            self.console.print(f"{Path(r.input).name} -> {r.output} ({r.seconds:.1f} s)")
        if d.degrade:
            for truth, blu, r in zip(truths, inputs, results):
                outputs.append(_panel(truth, blu, r.output))
            outputs += inputs
        return outputs


def _blurred(path, psf, out_dir):
    """``path`` degraded as bench-v1 does (PSF, Gaussian noise of ORI's background std, rng 0)."""
    import numpy as np
    from astropy.io import fits

    from .degrade import background_stats, degrade
    from .fits_io import read_image, strip_fits_suffix

    ori = read_image(path)
    std = background_stats(ori.data)[2]
    blu = degrade(ori.data, psf.kernel(), noise_std=std, rng=np.random.default_rng(0))
    header = ori.header.copy()
    header["HISTORY"] = f"astrosr run: blurred from {Path(path).name}: {psf.describe()}, noise std {std:.6g}, rng 0"
    target = out_dir / f"{strip_fits_suffix(Path(path).name)}_blu.fits"
    with atomic_path(target, overwrite=True) as tmp:
        fits.PrimaryHDU(blu.astype(np.float32), header=header).writeto(tmp)
    return str(target)


def _panel(truth, blu, sr):
    """ORI | BLU | SR side by side, one asinh stretch from ORI's percentiles: ``<sr>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .degrade import percentile_limits
    from .fits_io import read_image, strip_fits_suffix

    images = [read_image(p).data for p in (truth, blu, sr)]
    lo, hi = percentile_limits(images[0], 0.5, 99.9)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for ax, image, title in zip(axes, images, ("ORI (truth)", "BLU (input)", "SR (astrosr deblur)")):
        ax.imshow(np.arcsinh(10 * np.clip((image - lo) / (hi - lo), 0, 1)), origin="lower", cmap="gray")
        ax.set_title(title)
        ax.set_axis_off()
    fig.tight_layout()
    target = Path(sr).parent / f"{strip_fits_suffix(Path(sr).name)}.png"
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(target)


def _same_run(out, pairs, cfg):
    """An interrupted training of the same config on the same pairs file resumes."""
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    from .train import RUNTIME_KEYS

    mine = {"pairs": str(pairs.resolve()), **to_dict(cfg)}
    return all(saved.get(k) == v for k, v in mine.items() if k not in RUNTIME_KEYS)


def _hardware():
    import torch

    return {"cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "astrosr": __version__}


def run_pipeline(pipeline, *, run_dir=None, max_steps=None, force=False, data_dir=None, console=None):
    """Run a pipeline's stages in order, skipping those finished before with the same config.

    Parameters
    ----------
    pipeline : str or Path or Pipeline
    run_dir : str or Path, optional
        Default: the YAML's ``run_dir``, else ``runs/<name>``.
    max_steps : int, optional
        Override every train model's ``max_steps``.
    force : bool
        Rerun every stage.
    data_dir : str or Path, optional
        Data directory of the ``data`` stage (default its ``data_dir``, else
        ``$ASTROSR_DATA_DIR``).
    console : rich.console.Console, optional

    Returns
    -------
    dict
        The content of ``RUN/summary.json``: per stage its status, seconds and
        outputs, the total time, hardware and versions.
    """
    from rich.console import Console

    p = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
        p = dataclasses.replace(p, train={k: dataclasses.replace(v, max_steps=max_steps) for k, v in p.train.items()})
    console = console or Console(highlight=False, soft_wrap=True)
    run_dir = Path(run_dir or p.run_dir or Path("runs") / p.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "pipeline.yaml", overwrite=True) as tmp:
        tmp.write_text(f"# validated from {p.path}\n" + yaml.safe_dump(p.to_dict(), sort_keys=False))
    r = _Runner(p, run_dir, max_steps=max_steps, force=force, data_dir=data_dir, console=console)
    console.print(f"[bold]astrosr run[/] {p.path} -> {run_dir}")
    start = time.perf_counter()

    up = _hash("start")
    for name, s in p.simulate.items():
        digest = _hash(to_dict(s))
        r.stage(f"simulate.{name}", digest, lambda name=name, s=s: r.simulate(name, s))
        up = _hash(up, digest)
    if p.data is not None:
        up = _hash(up, to_dict(p.data) | {"data_dir": None}, sha256_file(r.manifest()))
        r.stage("data", up, r.check_data)
    if p.prepare is not None:
        up = _hash(up, to_dict(p.prepare))
        r.stage("prepare", up, r.prepare)
    trained = []
    for name, cfg in p.train.items():
        digest = _hash(up, to_dict(cfg))
        r.stage(f"train.{name}", digest, lambda name=name, cfg=cfg: r.train(name, cfg))
        trained.append(digest)
    up = _hash(up, trained)
    if p.evaluate is not None:
        e = p.evaluate
        runs = [("evaluate", _psf(e.psf_shape, e.psf_fwhm, e.psf_beta, e.psf_file))]
        runs += [(f"evaluate_fwhm{f:g}", _psf(e.psf_shape, f, e.psf_beta, None)) for f in e.extra_fwhm]
        for name, psf in runs:
            r.stage(name, _hash(up, to_dict(e), psf.to_dict()), lambda name=name, psf=psf: r.evaluate(run_dir / name, psf))
    if p.deblur is not None:
        r.stage("deblur", _hash(up, to_dict(p.deblur)), r.deblur)

    total = time.perf_counter() - start
    return _summarise(r, run_dir, total, console)


def _summarise(r, run_dir, total, console):
    from rich.table import Table

    summary = {"pipeline": str(r.p.path), "name": r.p.name, "run_dir": str(run_dir), "seconds": round(total, 1),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "hardware": _hardware(), "stages": r.rows, "records": r.records.stages}
    lines = [f"# astrosr run: {r.p.name}", "", f"Pipeline `{r.p.path}`, run directory `{run_dir}`, "
             f"{summary['date']}, {total:.0f} s in all.", "",
             "| stage | status | seconds | main output |", "|---|---|---:|---|"]
    table = Table(title=f"astrosr run {r.p.name}: {total:.0f} s")
    for name in ("stage", "status", "seconds", "main output"):
        table.add_column(name, justify="right" if name == "seconds" else "left")
    for row in r.rows:
        style = "green" if row["status"] == "done" else "yellow"
        table.add_row(row["stage"], f"[{style}]{row['status']}[/]", f"{row['seconds']:.1f}", row["output"])
        lines.append(f"| {row['stage']} | {row['status']} | {row['seconds']:.1f} | `{row['output']}` |")
    hw = summary["hardware"]
    lines += ["", f"Hardware: {hw['cpu_count']} CPUs ({hw['processor'] or hw['machine']}), GPU {hw['gpu'] or 'none'}; "
              f"python {hw['python']}, torch {hw['torch']}, astrosr {hw['astrosr']}.", ""]
    with atomic_path(run_dir / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with atomic_path(run_dir / "summary.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
    console.print(table)
    return summary
