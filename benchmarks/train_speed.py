"""Training throughput (tiles/s) of `vae` and `resvae` at their default configs, plus restore speed.

    python benchmarks/train_speed.py [--steps 20] [--threads 2] [--out benchmarks/results/train_speed.md]

Each training step (median over ``--steps`` timed steps after 3 warm-up steps) is exactly the loop's work (astrosr.losses.batch_loss: forward,
loss, backward, gradient clipping, AdamW step) on batches of 128x128 tiles of
the configs in pipelines/train_{vae,resvae}.yaml. Tiles are cut from a real
bench-v1 image (synth.fits, BLU-normalised); throughput does not depend on
pixel values. Restore speed: model.restore (posterior mean) over a 1024x1024
image cut into non-overlapping tiles, in seconds per megapixel (network only:
no tile overlap, no data-consistency step). CPU always; CUDA when present.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from astrosr.degrade import convolve_extend
from astrosr.psf import BENCH_V1_PSF
from astrosr.fits_io import read_image
from astrosr.models import build_model
from astrosr.losses import batch_loss as _losses
from astrosr.train_config import load_config

REPO = Path(__file__).resolve().parents[1]


def _tiles(n, data_dir):
    ori = read_image(data_dir / "synth.fits").data
    blu = convolve_extend(ori, BENCH_V1_PSF.kernel())
    lo, hi = np.percentile(blu, [0.5, 99.9])
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, ori.shape[0] - 128, n), rng.integers(0, ori.shape[1] - 128, n)
    cut = lambda a: np.stack([(a[y : y + 128, x : x + 128] - lo) / (hi - lo) for y, x in zip(ys, xs)])[:, None]
    return torch.tensor(cut(blu), dtype=torch.float32), torch.tensor(cut(ori), dtype=torch.float32)


def train_speed(name, device, steps, data_dir):
    cfg = load_config(REPO / "pipelines" / f"train_{name}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_options).to(device).train()
    blu, ori = _tiles(cfg.batch, data_dir)
    batch = {"blu": blu.to(device), "ori": ori.to(device),
             "psf": torch.tensor(BENCH_V1_PSF.kernel(), dtype=torch.float32, device=device).expand(cfg.batch, 41, 41),
             "cond": torch.tensor([[4.0, 0.01]] * cfg.batch, device=device)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(i):
        loss, _ = _losses(model, model, batch, cfg, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    for i in range(3):
        step(i)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    # the median step resists other jobs' bursts on a shared machine; the mean is shown beside it
    seconds = float(np.median(times))
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "batch": cfg.batch, "s_per_step": seconds,
            "mean_s_per_step": float(np.mean(times)), "tiles_per_s": cfg.batch / seconds}


def restore_speed(name, device, tile, reps=3):
    cfg = load_config(REPO / "pipelines" / f"train_{name}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_options).to(device).eval()
    n = (1024 // tile) ** 2
    image = torch.rand(n, 1, tile, tile, device=device)
    psf = torch.tensor(BENCH_V1_PSF.kernel(), dtype=torch.float32, device=device)
    batch = max(1, 16 * 128 * 128 // tile**2)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps):
            start = time.perf_counter()
            for i in range(0, n, batch):
                b = image[i : i + batch]
                model.restore(b, psf=psf.expand(len(b), 41, 41), cond=torch.tensor([[4.0, 0.01]] * len(b), device=device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return {"model": name, "tile": tile, "batch": batch, "s_per_mpix": best / (1024 * 1024 / 1e6)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("ASTROSR_DATA_DIR", REPO.parent / "shared" / "data" / "fits"))
    parser.add_argument("--out", default=REPO / "benchmarks" / "results" / "train_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()[0]
    lines = ["# Training throughput and restore speed", "",
             f"`python benchmarks/train_speed.py --steps {args.steps} --threads {args.threads}`; "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, {args.threads} torch threads on CPU.", ""]
    rows = []
    for device in devices:
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{args.threads} threads"
        for name in ("vae", "resvae"):
            r = train_speed(name, device, args.steps, Path(args.data_dir))
            rows.append((label, r))
            print(f"train {label} {name}: {r['tiles_per_s']:.1f} tiles/s ({r['s_per_step']:.3f} s/step)", flush=True)
    lines += ["## Training (default configs, 128x128 tiles)", "",
              "| device | model | parameters | batch | median s/step | mean s/step | tiles/s (median) |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {d} | {r['model']} | {r['params']:,} | {r['batch']} | {r['s_per_step']:.3f} | "
              f"{r['mean_s_per_step']:.3f} | {r['tiles_per_s']:.1f} |" for d, r in rows]
    restore_rows = []
    for device in devices:
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{args.threads} threads"
        for name, tile in (("resvae", 128), ("resvae", 256), ("vae", 128)):
            r = restore_speed(name, device, tile)
            restore_rows.append((label, r))
            print(f"restore {label} {name} tile {tile}: {r['s_per_mpix']:.3f} s/Mpix", flush=True)
    lines += ["", "## model.restore on a 1024x1024 image (network only, non-overlapping tiles, best of 3)", "",
              "| device | model | tile | tiles per call | s/Mpix |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {r['model']} | {r['tile']} | {r['batch']} | {r['s_per_mpix']:.3f} |" for d, r in restore_rows]
    load_after = os.getloadavg()[0]
    lines += ["", f"1-minute load average {load_before:.1f} before, {load_after:.1f} after (a shared machine: "
              "other jobs slow these figures; compare rows of one run only).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
