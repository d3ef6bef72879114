"""How long the CLI takes before it answers: ``--help`` and bad input, which should feel instant.

Runs each command ``--repeat`` times in a fresh process and prints the median wall time as a
Markdown table (torch, photutils, scikit-image and matplotlib load only where a command uses them).

    python benchmarks/startup.py [--repeat 5] [--out benchmarks/results/startup.md]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [
    ["--help"],
    ["deblur", "--help"],
    ["deblur", "missing.fits", "-o", "out"],
    ["evaluate", "missing.fits", "-o", "out"],
    ["prepare", "missing.fits", "-o", "out.h5"],
    ["train", "missing.h5", "-o", "out"],
    ["deblur", "missing.fits", "-o", "out", "--psf-fwhm", "0"],
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = ["| command | median s | exit |", "|---|---:|---:|"]
    # the installed ``astrosr`` script, as users run it (else the module)
    entry = [shutil.which("astrosr")] if shutil.which("astrosr") else [sys.executable, "-m", "astrosr.cli"]
    with tempfile.TemporaryDirectory() as work:
        for command in COMMANDS:
            times, code = [], None
            for _ in range(args.repeat):
                start = time.perf_counter()
                run = subprocess.run([*entry, *command], cwd=work, capture_output=True)
                times.append(time.perf_counter() - start)
                code = run.returncode
            rows.append(f"| `astrosr {' '.join(command)}` | {statistics.median(times):.2f} | {code} |")
    text = "\n".join(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(f"# CLI start-up (median of {args.repeat} runs)\n\n{text}\n")


if __name__ == "__main__":
    main()
