"""What the benchmark tools share: a config's data, a figure's spread over seeds, and the command."""

import shlex
import sys

import numpy as np


def spread(values) -> dict[str, float]:
    """Mean, minimum, sample sd (0 for one value) and standard error of the mean; NaN in, NaN out."""
    values = np.asarray(values, dtype=float)
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "min": float(values.min()), "sd": sd, "se": sd / np.sqrt(len(values))}


def spread_line(label: str, values) -> str:
    """``LABEL over N seeds: mean M  min M  sd S``, the line every tool prints a figure over seeds with."""
    mean, low, sd = (spread(values)[key] for key in ("mean", "min", "sd"))
    return f"{label} over {len(values)} seeds: mean {mean:.3f}  min {low:.3f}  sd {sd:.3f}"


def command(module: str, argv: list[str] | None = None) -> str:
    """The command that reruns a tool (``python -m benchmarks.NAME ARGS``), printed last by each."""
    return shlex.join(["python", "-m", f"benchmarks.{module}", *(sys.argv[1:] if argv is None else argv)])


def table(header: list[str], rows: list[list]) -> str:
    """Rows as text columns, each as wide as its widest cell: the first left-aligned, the others right."""
    lines = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )
