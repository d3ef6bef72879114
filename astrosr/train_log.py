"""A training run's record on disk: ``metrics.csv`` (one row per logged step), ``loss_curve.png``,
``config.yaml`` and ``summary.json``, each written atomically.

Rows are appended as the run goes, so the file is current even when a run
is killed; a resumed run first keeps the rows up to its checkpoint's step.
Floats are written with 6 significant digits, missing values as empty cells.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from .files import atomic_path, write_failure

__all__ = ["COLUMNS", "MetricsLog", "plot_loss_curve", "write_config", "write_json"]

#: the columns of ``metrics.csv``, in order
COLUMNS = ["step", "lr", "loss", "recon", "kl", "beta", "ssim", "consistency", "recon_posterior", "recon_prior",
           "noise_nll", "tiles_per_s", "elapsed_s",
           "val_tile_ssim", "val_tile_mse", "val_ssim", "val_mse", "val_flux_err", "val_spurious"]


class MetricsLog:
    """``out/metrics.csv``, rewritten at start (keeping rows up to ``resume_step``) and appended to.

    Parameters
    ----------
    out : str or Path
        Run directory (must exist).
    resume_step : int, optional
        Keep the existing file's rows of steps ``<= resume_step``; None starts empty.

    Examples
    --------
    >>> import tempfile
    >>> log = MetricsLog(tempfile.mkdtemp())
    >>> log.add({"step": 1, "lr": 0.002, "loss": 0.123456789})
    >>> log.path.read_text().splitlines()[1]
    '1,0.002,0.123457,,,,,,,,,,,,,,,,'
    """

    def __init__(self, out: str | Path, resume_step: int | None = None):
        out = Path(out)
        self.path = out / "metrics.csv"
        self.png = out / "loss_curve.png"
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_path(self.path, overwrite=True) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        """Append one row (keys from :data:`COLUMNS`; others are ignored)."""
        row = {k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]))
               for k in COLUMNS}
        self.rows.append(row)
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow(row)
        except OSError as exc:  # a full disk mid-run: one line naming the file, last.pt stays the last good one
            failure = write_failure(exc, self.path)
            if failure is None:
                raise
            raise failure from None

    def plot(self) -> None:
        """Write ``loss_curve.png`` from the rows so far."""
        plot_loss_curve(self.rows, self.png)


def plot_loss_curve(rows: list[dict], path: str | Path) -> None:
    """Train loss (log scale) and val MSE against step, as a PNG written atomically.

    ``rows`` are ``metrics.csv`` rows (values as strings or numbers; empty
    cells are skipped).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return list(zip(*pts)) if pts else ([], [])

    fig, ax = plt.subplots(figsize=(7, 4))
    # the reconstruction term, not the loss: a noise head's log-likelihood term makes the loss negative
    ax.plot(*series("recon"), lw=1, label="train reconstruction")
    ax.set_xlabel("step")
    ax.set_ylabel("train reconstruction loss")
    ax.set_yscale("log")
    twin = ax.twinx()
    for key, style in (("val_mse", "o-"), ("val_tile_mse", "s--")):
        xs, ys = series(key)
        if xs:
            twin.plot(xs, ys, style, color="C3" if key == "val_mse" else "C2", ms=3, label=key.replace("_", " "))
    twin.set_ylabel("val MSE (bench-v1, clipped)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_config(path: str | Path, config: dict, comment: str) -> None:
    """``config`` as YAML (keys in order) under a ``# comment`` line, written atomically."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(f"# {comment}\n" + yaml.safe_dump(config, sort_keys=False))


def write_json(path: str | Path, data: dict) -> None:
    """``data`` as indented JSON (anything else as ``str``), written atomically."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
