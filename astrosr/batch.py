"""Batches of FITS files for :func:`astrosr.deblur.deblur_file`: serial, local processes or Dask.

:func:`deblur_batch` expands files, directories and globs, checks every
output name before any work, and runs the files one task each (in this
process, a spawn-context process pool, or one Dask task per file), so a bad
file fails alone and an interrupted batch resumes by skipping what is done:
each output is ``OUT/<stem>_deblur.fits``, and one already there is skipped
only when its cards name the same model sha256, PSF and settings. Results
are identical whichever way the batch runs.

Examples
--------
>>> from astrosr.batch import deblur_batch
>>> results = deblur_batch(["survey/"], "deblurred/", workers=2)  # doctest: +SKIP
>>> [(r.input, r.status) for r in results]  # doctest: +SKIP
[('survey/a.fits', 'done'), ('survey/b.fits', 'skipped')]
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .config import replace
from .deblur import DeblurOptions, FileResult, deblur_file
from .errors import AstrosrError, ConfigError, InputError
from .fits_io import FITS_SUFFIXES
from .files import make_dir
from .fits_out import output_path
from .progress import ProgressCallback, report

__all__ = ["deblur_batch", "expand_inputs"]

_GLOB_CHARS = set("*?[")


# --- inputs and outputs --------------------------------------------------------


def _is_fits_name(path):
    return path.name.lower().endswith(FITS_SUFFIXES)


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, directories (their FITS-named files, not recursive) and globs -> unique paths.

    Order is kept (first occurrence wins); a directory's files and a glob's
    matches are sorted. A missing file, an empty directory or a glob that
    matches nothing is an error, before any work starts.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.fits", "a.fits.gz", "notes.txt"):
    ...     _ = (folder / name).write_text("")
    >>> [p.name for p in expand_inputs([folder, folder / "b.fits"])]
    ['a.fits.gz', 'b.fits']
    """
    found = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_fits_name(p))
            if not files:
                raise InputError(f"{path}: directory holds no .fits, .fits.gz or .fz files")
        elif path.exists():
            files = [path]
        elif _GLOB_CHARS & set(text):
            files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not files:
                raise InputError(f"{text}: no file matches this pattern")
        else:
            raise InputError(f"{path}: file not found")
        found.extend(files)
    unique, seen = [], set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _plan(paths, out_dir, o):
    """Pair each input with its output; name clashes are errors before any work."""
    pairs = [(p, output_path(p, out_dir, compress=o.compress, hdu=o.hdu, plane=o.plane)) for p in paths]
    by_output = {}
    for src, out in pairs:
        by_output.setdefault(out.resolve(), []).append(src)
    for out, sources in by_output.items():
        if len(sources) > 1:
            names = ", ".join(str(s) for s in sources)
            raise InputError(f"{names}: these inputs all map to the output {out}; rename one or deblur them separately")
    inputs = {p.resolve() for p in paths}
    for src, out in pairs:
        if out.resolve() in inputs:
            raise InputError(f"{src}: its output {out} is one of the inputs; choose another out_dir")
    return pairs


# --- running -------------------------------------------------------------------


def _one_line(exc, path):
    text = str(exc) if isinstance(exc, AstrosrError) else f"{type(exc).__name__}: {exc}"
    prefix = f"{path}: "
    text = text[len(prefix) :] if text.startswith(prefix) else text
    return " ".join(text.split()) or type(exc).__name__


def _task(job):
    """Run one file of a batch; every failure becomes a ``'failed'`` row, never an exception."""
    job = dict(job)
    path = job.pop("path")
    start = time.perf_counter()
    try:
        return deblur_file(path, **job)
    except Exception as exc:  # one bad file must not stop the batch
        return FileResult(str(path), None, "failed", _one_line(exc, path), time.perf_counter() - start)


def _init_worker(threads, parent):
    import signal
    import threading

    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch process's to handle, once
    # a worker whose batch process died (kill -9, out of memory) has no one to report to: it ends
    # within a couple of seconds instead of finishing its image and idling on as an orphan
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="astrosr-parent-watch").start()


def _exit_with(parent, every=1.0):
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _run_local(jobs, workers, report):
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: forking a process that already runs torch's thread pool can deadlock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_task, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # a worker died (out of memory, killed)
                result = FileResult(str(jobs[i]["path"]), None, "failed", f"worker died: {_one_line(exc, '')}")
            report(i, result)


def _dask_client(scheduler, dask_local):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("scheduler / dask_local need dask.distributed: pip install 'astrosr[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"scheduler {scheduler}: cannot connect ({_one_line(exc, '')})") from None
    import logging

    cluster = LocalCluster(
        n_workers=dask_local, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    )
    return Client(cluster), cluster


def _run_dask(jobs, scheduler, dask_local, report):
    client, cluster = _dask_client(scheduler, dask_local)
    from distributed import as_completed
    try:
        futures = client.map(_task, jobs, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures):
            i = index[future.key]
            try:
                result = future.result()
            except Exception as exc:  # KilledWorker and friends
                result = FileResult(str(jobs[i]["path"]), None, "failed", f"dask task failed: {_one_line(exc, '')}")
            report(i, result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def deblur_batch(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    options: DeblurOptions | None = None,
    *,
    progress: ProgressCallback = None,
    **keys: Any,
) -> list[FileResult]:
    """Deblur many FITS files: serially, in ``workers`` local processes, or one Dask task each.

    Parameters
    ----------
    inputs : sequence of str or Path
        Files, directories (their ``.fits``/``.fits.gz``/``.fz`` files) and globs.
    out_dir : str or Path
    options : DeblurOptions, optional
        Model, PSF, settings and how to run (``workers``, ``scheduler``,
        ``dask_local``; ``hdu`` and ``plane`` apply to every input); ``keys``
        (option keys) override its fields.
    progress : callable, optional
        ``progress('images', done, total)`` after each file, and in a serial
        run ``progress('tiles', done, total)`` within each file
        (:mod:`astrosr.progress`). :attr:`FileResult.status` of each file is
        in the returned list.

    Returns
    -------
    list of FileResult
        In input order. The batch never stops at a bad file: it is a
        ``'failed'`` row with a one-line reason.

    Raises
    ------
    InputError
        Missing inputs, or output names that clash with each other or with
        an input (before any work).
    ConfigError
        Conflicting parallel options, Dask missing or unreachable.
    CheckpointError
        The model file cannot be loaded (before any work).

    Examples
    --------
    >>> from astrosr.psf import PSF
    >>> results = deblur_batch(["survey/*.fits"], "deblurred/", psf=PSF(fwhm=3.2), workers=2)  # doctest: +SKIP
    >>> sum(r.status == "failed" for r in results)  # doctest: +SKIP
    0
    """
    o = replace(options or DeblurOptions(), **keys) if keys or options is None else options
    pairs = _plan(expand_inputs(inputs), out_dir, o)  # a missing input is reported before torch loads
    from .checkpoint import clear_model_cache, load_model_cached, resolve_device

    device = resolve_device(o.device)  # a device this machine lacks: one error before any work
    parallel = o.workers > 1 or o.scheduler or o.dask_local
    # absolute paths: a Dask worker may run in another directory (on a shared file system)
    model = str(Path(o.model).resolve()) if Path(o.model).is_file() else str(o.model)
    o = dataclasses.replace(o, model=model, psf=o.psf.absolute())
    # load the model here first: a bad model file is one error, not a failed row per image
    load_model_cached(model, device="cpu" if parallel else device)
    o.psf.identity()  # a missing PSF file fails here too
    if o.psf.shape != "auto":
        o.psf.kernel()  # and one that is not a PSF kernel (truncated, a galaxy image, off-centre): before any work
    if parallel:
        clear_model_cache()  # the workers load their own; this process need not hold one meanwhile
    make_dir(out_dir)  # an output directory that cannot be written: one error before any image is deblurred
    out_dir = str(Path(out_dir).resolve())
    jobs = [{"path": str(src.resolve()), "out_dir": out_dir, "options": o} for src, _ in pairs]
    results = [None] * len(jobs)

    def done(i, result):
        result.input = str(pairs[i][0])
        results[i] = result
        report(progress, "images", sum(r is not None for r in results), len(jobs))

    if o.scheduler or o.dask_local:
        _run_dask(jobs, o.scheduler, o.dask_local, done)
    elif o.workers > 1:
        _run_local(jobs, o.workers, done)
    else:
        for i, job in enumerate(jobs):
            done(i, _task({**job, "progress": progress}))
    return results
