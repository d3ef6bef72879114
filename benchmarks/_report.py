"""The one Markdown table a benchmark script prints and, with ``-o``, writes (shared by the scripts here)."""

from pathlib import Path


def emit(title: str, header: list[str], rows: list[str], out: str | None = None) -> str:
    """Print ``title`` and a table (``header``; the first column left-aligned, the rest right); write it to ``out``."""
    align = "|---|" + "---:|" * (len(header) - 1)
    text = "\n".join([title, "", "| " + " | ".join(header) + " |", align, *rows]) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    return text
