"""Batches of FITS files for :func:`astrosr.deblur.deblur_file`: serial, local processes or Dask.

:func:`deblur_batch` expands files, directories and globs, checks every
output name before any work, and runs the files one task each (in this
process, a spawn-context process pool, or one Dask task per file), so a bad
file fails alone and an interrupted batch resumes by skipping what is done.
Results are identical whichever way the batch runs.
"""

import glob
import os
import time
from pathlib import Path

from .psf import BENCH_V1_PSF
from .deblur import _MODEL_CACHE, FileResult, _absolute_psf, _load_model, deblur_file, output_path, psf_identity, resolve_device
from .errors import AstrosrError, ConfigError, InputError
from .fits_io import FITS_SUFFIXES

__all__ = ["deblur_batch", "expand_inputs"]

_GLOB_CHARS = set("*?[")


# --- inputs and outputs --------------------------------------------------------


def _is_fits_name(path):
    return path.name.lower().endswith(FITS_SUFFIXES)


def expand_inputs(inputs):
    """Files, directories (their FITS-named files, not recursive) and globs -> unique paths.

    Order is kept (first occurrence wins); a directory's files and a glob's
    matches are sorted. A missing file, an empty directory or a glob that
    matches nothing is an error, before any work starts.
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


def _plan(paths, out_dir, compress):
    """Pair each input with its output; name clashes are errors before any work."""
    pairs = [(p, output_path(p, out_dir, compress=compress)) for p in paths]
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
            raise InputError(f"{src}: its output {out} is one of the inputs; choose another -o directory")
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


def _init_worker(threads):
    import torch

    torch.set_num_threads(threads)


def _run_local(jobs, workers, report):
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: forking a process that already runs torch's thread pool can deadlock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)) as pool:
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
        raise ConfigError("--scheduler / --dask-local need dask.distributed: pip install 'astrosr[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({_one_line(exc, '')})") from None
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
    inputs,
    out_dir,
    *,
    model_path="default",
    psf=BENCH_V1_PSF,
    consistency=True,
    overlap=32,
    samples=0,
    compress=False,
    overwrite=False,
    device="auto",
    hdu=None,
    plane=None,
    workers=1,
    scheduler=None,
    dask_local=None,
    progress=None,
    tile_progress=None,
):
    """Deblur many FITS files: serially, in ``workers`` local processes, or one Dask task each.

    Parameters
    ----------
    inputs : sequence of str or Path
        Files, directories (their ``.fits``/``.fits.gz``/``.fz`` files) and globs.
    out_dir : str or Path
    model_path, psf, consistency, overlap, samples, compress, overwrite, device, hdu, plane
        As :func:`deblur_file` (``hdu`` and ``plane`` apply to every input).
    workers : int
        Local processes (1: run in this process).
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:8786``); needs ``distributed``.
    dask_local : int, optional
        Start a ``distributed.LocalCluster`` with this many worker processes.
    progress : callable, optional
        ``progress(result, total)`` after each file.
    tile_progress : callable, optional
        Serial runs only: called with the number of tiles done after each
        network batch (a large image shows progress within the file).

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
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if scheduler and dask_local:
        raise ConfigError("--scheduler and --dask-local exclude each other")
    if (scheduler or dask_local) and workers > 1:
        raise ConfigError("--workers is for local processes; with --scheduler / --dask-local the cluster sets the workers")
    if dask_local is not None and dask_local < 1:
        raise ConfigError(f"--dask-local must be >= 1, got {dask_local}")
    pairs = _plan(expand_inputs(inputs), out_dir, compress)
    parallel = workers > 1 or scheduler or dask_local
    # absolute paths: a Dask worker may run in another directory (on a shared file system)
    model_path = str(Path(model_path).resolve()) if Path(model_path).is_file() else str(model_path)
    psf = _absolute_psf(psf)
    # load the model here first: a bad model file is one error, not a failed row per image
    _load_model(model_path, "cpu" if parallel else resolve_device(device))
    psf_identity(psf)  # a missing PSF file fails here too
    if parallel:
        _MODEL_CACHE.clear()
    common = {
        "out_dir": str(Path(out_dir).resolve()),
        "model_path": model_path,
        "psf": psf,
        "consistency": consistency,
        "overlap": overlap,
        "samples": samples,
        "compress": compress,
        "overwrite": overwrite,
        "device": device,
        "hdu": hdu,
        "plane": plane,
    }
    jobs = [{"path": str(src.resolve()), **common} for src, _ in pairs]
    results = [None] * len(jobs)

    def report(i, result):
        result.input = str(pairs[i][0])
        results[i] = result
        if progress is not None:
            progress(result, len(jobs))

    if scheduler or dask_local:
        _run_dask(jobs, scheduler, dask_local, report)
    elif workers > 1:
        _run_local(jobs, workers, report)
    else:
        for i, job in enumerate(jobs):
            report(i, _task({**job, "progress": tile_progress}))
    return results
