"""The one Markdown table a benchmark script prints and, with ``-o``, writes (shared by the scripts here)."""

from pathlib import Path


def emit(title: str, header: list[str], rows: list[str], out: str | None = None, *, text_columns: int = 1) -> str:
    """Print ``title`` and a table (``header``; the first ``text_columns`` left-aligned, the rest right); write it to ``out``."""
    align = "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)
    text = "\n".join([title, "", "| " + " | ".join(header) + " |", align, *rows]) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    return text
