"""``astrosr run PIPELINE.yaml``: simulate, data, prepare, train, evaluate and deblur in one run directory.

Kept together as one module: the runner's stages, its resume records and
the run summary are one piece of bookkeeping.

The file format is :mod:`astrosr.pipeline_config`. Outputs go under the run
directory: ``simulate/<set>/``, ``data.json``, ``prepare/pairs.h5``,
``train/<model>/``, ``evaluate/`` (``evaluate_fwhm<F>/`` for ``extra_fwhm``),
``deblur/``, plus ``pipeline.yaml`` (the validated config), ``stages.json``
(each stage's status, hash, seconds and outputs) and ``summary.md`` /
``summary.json``.

Resume: a stage's hash covers its own config and the hashes of the stages it
reads. A rerun skips a stage whose hash is unchanged, whose outputs exist and
whose inputs were not remade since; anything else runs again (an interrupted
training of the same hash continues from its ``last.pt``).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import __version__
from .config import to_dict
from .errors import ConfigError, DataError
from .files import atomic_path, make_dir, sha256_file
from .provenance import hardware, versions, utc_now
from .pipeline_config import Pipeline, find_path, load_pipeline, path_exists

if TYPE_CHECKING:
    import os

    from .progress import ProgressCallback

__all__ = ["run_pipeline", "load_pipeline"]

log = logging.getLogger(__name__)


# --- running --------------------------------------------------------------------


def _hash(*parts):
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Records:
    """``RUN/stages.json``: per stage its status (started / done), hash, seconds, outputs and end time."""

    def __init__(self, run_dir, force):
        self.path = run_dir / "stages.json"
        self.stages = {}
        if self.path.is_file() and not force:
            try:
                self.stages = dict(json.loads(self.path.read_text())["stages"])
            except (ValueError, KeyError, TypeError):
                self.stages = {}  # a damaged record only costs a rerun

    def done(self, stage, digest, deps):
        """Finished with this hash, outputs present, and no input stage remade after it."""
        rec = self.stages.get(stage) or {}
        if rec.get("status") != "done" or rec.get("hash") != digest:
            return False
        if not all(Path(p).exists() for p in rec.get("outputs", [])):
            return False
        return all(self.stages.get(d, {}).get("ended", 0) <= rec["ended"] for d in deps)

    def interrupted(self, stage, digest):
        """Started with this hash but never finished (a training that may continue)."""
        rec = self.stages.get(stage) or {}
        return rec.get("status") == "started" and rec.get("hash") == digest

    def set(self, stage, **record):
        self.stages[stage] = record
        with atomic_path(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps({"astrosr_version": __version__, "stages": self.stages}, indent=2) + "\n")


def _fresh(path):
    """Remove a stage's own output directory inside the run directory before it reruns."""
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Runner:
    """Runs the stages of one pipeline in one run directory, recording each."""

    def __init__(self, pipeline, run_dir, *, force, data_dir, progress):
        self.p, self.run, self.progress = pipeline, run_dir, progress
        self.base = pipeline.path.resolve().parent
        self.data_dir = data_dir
        self.records = _Records(run_dir, force)
        self.digests = {}
        self.rows = []
        self.resume = False
        self.total = (len(pipeline.simulate) + len(pipeline.train) + (pipeline.data is not None)
                      + (pipeline.prepare is not None) + (pipeline.deblur is not None)
                      + (1 + len(pipeline.evaluate.extra_fwhm) if pipeline.evaluate is not None else 0))

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
            elif path_exists(ref, self.base) and not glob.glob(ref):
                out.append(find_path(ref, self.base, ref))
            else:
                out += sorted(glob.glob(ref))
        return [str(p) for p in out]

    def model(self, ref):
        if ref in self.p.train:
            return self.run / "train" / ref / "best.pt"
        return ref if ref == "default" else find_path(ref, self.base, ref)

    def inputs(self, models, images):
        """The stages whose outputs these model and image references read."""
        return ([f"train.{m}" for m in models if m in self.p.train]
                + [f"simulate.{i}" for i in images if i in self.p.simulate])

    def identities(self, models):
        """sha256 of the weight files given by path: a replaced file makes its stages rerun."""
        return [sha256_file(self.model(m)) if m not in self.p.train and m != "default" else m for m in models]

    def deblur_model(self):
        d = self.p.deblur
        return d.model or (next(iter(self.p.train)) if self.p.train else "default")

    def manifest(self):
        return find_path(self.p.data.manifest, self.base, "data.manifest")

    def data_directory(self):
        return self.data_dir or self.p.data.data_dir

    # stage driver ------------------------------------------------------------
    def stage(self, name, config, deps, fn):
        """Run ``fn`` (returning its output paths) unless stage ``name`` is done with this config and inputs."""
        digest = _hash(config, [self.digests[d] for d in deps])
        self.digests[name] = digest
        log.info("%d/%d %s", len(self.rows) + 1, self.total, name)
        if self.records.done(name, digest, deps):
            rec = self.records.stages[name]
            log.info("%s skipped: done before with the same config (%.1f s)", name, rec["seconds"])
            self.rows.append({"stage": name, "status": "skipped", "seconds": 0.0,
                              "output": rec["outputs"][0] if rec["outputs"] else ""})
            return
        self.resume = self.records.interrupted(name, digest)
        self.records.set(name, status="started", hash=digest)
        t0 = time.perf_counter()
        outputs = [str(p) for p in fn()]
        seconds = time.perf_counter() - t0
        self.records.set(name, status="done", hash=digest, seconds=round(seconds, 3), outputs=outputs,
                         ended=time.time(),
                         finished=utc_now().isoformat(timespec="seconds"))
        main = outputs[0] if outputs else ""
        log.info("%s done in %.1f s -> %s", name, seconds, main)
        self.rows.append({"stage": name, "status": "done", "seconds": seconds, "output": main})

    # stages ------------------------------------------------------------------
    def simulate(self, name, s):
        from .simulate import simulate_fields

        out = _fresh(self.run / "simulate" / name)
        return simulate_fields(out, s, overwrite=True, progress=self.progress)  # a SimulateSet is SimulateOptions

    def check_data(self):
        from .manifest import data_dir_from, fetch, resolve

        d = self.p.data
        if d.fetch:
            fetch(self.manifest(), self.data_directory(), fields=d.fields, progress=self.progress)
        sources = resolve(self.manifest(), self.data_directory(), d.fields)
        record = {"manifest": str(self.manifest()), "data_dir": str(data_dir_from(self.data_directory())),
                  "files": [[str(p), f] for p, f in sources]}
        with atomic_path(self.run / "data.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        log.info("%d files checked (sha256) for fields %s", len(sources),
                 ", ".join(d.fields or sorted({f for _, f in sources})))
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
        result = prepare_pairs(sources, out, config=self.p.prepare, overwrite=True, progress=self.progress)
        log.info("%d tile pairs from %d images: %s", result["n_tiles"], result["n_images"],
                 ", ".join(f"{k} {v}" for k, v in result["tiles_per_field"].items()))
        return [out]

    def train(self, name, cfg):
        from .train import train

        out = self.run / "train" / name
        pairs = self.run / "prepare" / "pairs.h5"
        resume = self.resume and (out / "last.pt").is_file()
        if not resume:
            _fresh(out)
        if cfg.init in self.p.train:
            cfg = dataclasses.replace(cfg, init=str(self.model(cfg.init)))
        summary = train(pairs, cfg, out, resume=resume)
        best = summary.get("best") or {}
        shown = ", ".join(f"{k} {best[k]:.4g}" for k in ("ssim", "mse", "flux_err", "tile_ssim", "tile_mse")
                          if isinstance(best.get(k), float))
        log.info(f"{name}: {summary['steps']} steps in {summary['seconds']:.0f} s on {summary['device']}"
                           f"{'; best ' + shown if shown else ''}")
        return [out / "best.pt", out / "last.pt", out / "metrics.csv", out / "summary.json"]

    def evaluate(self, out, psf):
        from .evaluate import evaluate

        e = self.p.evaluate
        options = e.options(images=self.files(e.images), models=[str(self.model(m)) for m in e.models],
                            manifest=str(self.manifest()) if e.fields else None,
                            data_dir=str(self.data_directory()) if self.p.data and self.data_directory() else None,
                            psf=psf)
        evaluate(out, options, progress=self.progress)
        return [out / "report.md", out / "summary.json", out / "metrics.csv"]

    def deblur(self):
        from .batch import deblur_batch
        from .evaluate_report import truth_panel

        d = self.p.deblur
        out = _fresh(self.run / "deblur")
        model = self.deblur_model()
        psf = d.psf
        inputs = self.files(d.inputs)
        if d.degrade:
            truths, inputs = inputs, [_blurred(p, psf, out / "blurred") for p in inputs]
        results = deblur_batch(inputs, out, d.options(model=str(self.model(model)), overwrite=True),
                               progress=self.progress)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise DataError(f"deblur: {failed[0].input}: {failed[0].reason}")
        outputs = [r.output for r in results]
        for r in results:
            log.info("%s -> %s (%.1f s)", Path(r.input).name, r.output, r.seconds)
        if d.degrade:
            for truth, blu, r in zip(truths, inputs, results):
                outputs.append(truth_panel(truth, blu, r.output))
            outputs += inputs
        return outputs


def _blurred(path, psf, out_dir):
    """``path`` degraded as bench-v1 does (PSF, Gaussian noise of ORI's background std, rng 0)."""
    import numpy as np
    from astropy.io import fits

    from .degrade import bench_v1_degrade
    from .fits_io import read_image, strip_fits_suffix

    ori = read_image(path)
    blu, std = bench_v1_degrade(ori.data, psf.kernel())
    header = ori.header.copy()
    header["HISTORY"] = f"astrosr run: blurred from {Path(path).name}: {psf.describe()}, noise std {std:.6g}, rng 0"
    target = out_dir / f"{strip_fits_suffix(Path(path).name)}_blu.fits"
    with atomic_path(target, overwrite=True) as tmp:
        fits.PrimaryHDU(blu.astype(np.float32), header=header).writeto(tmp)
    return str(target)


def run_pipeline(pipeline: str | os.PathLike | Pipeline, *, run_dir: str | os.PathLike | None = None,
                 max_steps: int | None = None, force: bool = False, data_dir: str | os.PathLike | None = None,
                 progress: ProgressCallback = None) -> dict[str, Any]:
    """Run a pipeline's stages in order, skipping those finished before with the same config.

    Parameters
    ----------
    pipeline : str or Path or Pipeline
        A pipeline YAML (:func:`astrosr.pipeline_config.load_pipeline`) or a
        loaded :class:`~astrosr.pipeline_config.Pipeline`.
    run_dir : str or Path, optional
        Default: the YAML's ``run_dir``, else ``runs/<name>``.
    max_steps : int, optional
        Override every train model's ``max_steps``.
    force : bool
        Rerun every stage.
    data_dir : str or Path, optional
        Data directory of the ``data`` stage (default its ``data_dir``, else
        ``$ASTROSR_DATA_DIR``).
    progress : callable, optional
        Passed to every stage (:mod:`astrosr.progress`); stage starts and ends
        are logged (logger ``astrosr.pipeline``).

    Returns
    -------
    dict
        The content of ``RUN/summary.json``: per stage its status, seconds and
        outputs, the total time, hardware and versions.

    Raises
    ------
    ConfigError
        An invalid pipeline file or ``max_steps`` below 1.

    Examples
    --------
    A pipeline of one simulate stage; the rerun skips it:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.pipeline import run_pipeline
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = (tmp / "sim.yaml").write_text("simulate:\\n  test: {n: 1, seed: 1000, size: 128}\\n")
    >>> summary = run_pipeline(tmp / "sim.yaml", run_dir=tmp / "run")
    >>> [(row["stage"], row["status"]) for row in summary["stages"]]
    [('simulate.test', 'done')]
    >>> [row["status"] for row in run_pipeline(tmp / "sim.yaml", run_dir=tmp / "run")["stages"]]
    ['skipped']

    The quickstart (simulate, prepare, train, evaluate, deblur: minutes on a CPU):

    >>> summary = run_pipeline("pipelines/quickstart.yaml", max_steps=50)  # doctest: +SKIP
    """
    p = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if max_steps is not None:
        if max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {max_steps}")
        p = dataclasses.replace(p, train={k: dataclasses.replace(v, max_steps=max_steps) for k, v in p.train.items()})
    run_dir = Path(run_dir or p.run_dir or Path("runs") / p.name)
    make_dir(run_dir)
    with atomic_path(run_dir / "pipeline.yaml", overwrite=True) as tmp:
        tmp.write_text(f"# validated from {p.path}\n" + yaml.safe_dump(p.to_dict(), sort_keys=False))
    r = _Runner(p, run_dir, force=force, data_dir=data_dir, progress=progress)
    log.info("astrosr run %s -> %s", p.path, run_dir)
    start = time.perf_counter()

    for name, sim in p.simulate.items():
        r.stage(f"simulate.{name}", to_dict(sim), [], lambda name=name, sim=sim: r.simulate(name, sim))
    if p.data is not None:
        r.stage("data", [to_dict(p.data) | {"data_dir": None}, sha256_file(r.manifest())], [], r.check_data)
    if p.prepare is not None:
        deps = [f"simulate.{n}" for n, sim in p.simulate.items() if sim.field] + (["data"] if p.data else [])
        r.stage("prepare", to_dict(p.prepare), deps, r.prepare)
    for name, cfg in p.train.items():
        # init may name an earlier model of this run: fine-tuned from its best.pt, after it
        deps = ["prepare"] + ([f"train.{cfg.init}"] if cfg.init in p.train and cfg.init != name else [])
        r.stage(f"train.{name}", to_dict(cfg), deps, lambda name=name, cfg=cfg: r.train(name, cfg))
    if p.evaluate is not None:
        e = p.evaluate
        deps = r.inputs(e.models, e.images) + (["data"] if e.fields else [])
        runs = [("evaluate", e.psf)]
        runs += [(f"evaluate_fwhm{f:g}", dataclasses.replace(e.psf, fwhm=f)) for f in e.extra_fwhm]
        for name, psf in runs:
            r.stage(name, [to_dict(e), psf.to_dict(), r.identities(e.models)], deps,
                    lambda name=name, psf=psf: r.evaluate(run_dir / name, psf))
    if p.deblur is not None:
        d = p.deblur
        r.stage("deblur", [to_dict(d), r.identities([r.deblur_model()])], r.inputs([r.deblur_model()], d.inputs),
                r.deblur)

    total = time.perf_counter() - start
    return _summarise(r, run_dir, total)


def _summarise(r, run_dir, total):
    summary = {"pipeline": str(r.p.path), "name": r.p.name, "run_dir": str(run_dir), "seconds": round(total, 1),
               "date": utc_now().isoformat(timespec="seconds"),
               "hardware": {**hardware(), **versions()}, "stages": r.rows, "records": r.records.stages}
    lines = [f"# astrosr run: {r.p.name}", "", f"Pipeline `{r.p.path}`, run directory `{run_dir}`, "
             f"{summary['date']}, {total:.0f} s in all.", "",
             "| stage | status | seconds | main output |", "|---|---|---:|---|"]
    for row in r.rows:
        lines.append(f"| {row['stage']} | {row['status']} | {row['seconds']:.1f} | `{row['output']}` |")
    hw = summary["hardware"]
    lines += ["", f"Hardware: {hw['cpu']} ({hw['cpu_count']} CPUs), GPU {hw['gpu'] or 'none'}; "
              f"python {hw['python']}, torch {hw['torch']}, astrosr {hw['astrosr']}.", ""]
    with atomic_path(run_dir / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with atomic_path(run_dir / "summary.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))
    return summary
