"""Learning curves from runs' metrics.jsonl: train loss and validation/test RMSE per epoch.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend), so
this works headless and leaves the caller's matplotlib state alone.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from autorec_jax.fileio import atomic_path
from autorec_jax.errors import DataError

METRICS_FILE = "metrics.jsonl"


def metrics_path(run: str | os.PathLike) -> Path:
    """A run folder's metrics.jsonl (a path to the file itself is accepted too)."""
    run = Path(run)
    return run if run.suffix == ".jsonl" else run / METRICS_FILE


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a run (null and NaN values become float NaN).

    Raises:
      DataError: the file is missing or a line is not a JSON object.
    """
    path = metrics_path(run)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"no {METRICS_FILE} (is this a run folder?)", path=str(path)) from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not JSON: {err.msg}", path=str(path), line=number) from None
        if not isinstance(record, dict):
            raise DataError("not a JSON object", path=str(path), line=number)
        records.append({k: math.nan if v is None else v for k, v in record.items()})
    return records


def series(records: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of `key` over the records that have it; NaN where it was null."""
    pairs = [(r.get("epoch", i + 1), float(r[key])) for i, r in enumerate(records) if key in r]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its path where two runs share a name."""
    names = [p.parent.name or str(p.parent) for p in paths]
    return [n if names.count(n) == 1 else str(p.parent) for n, p in zip(names, paths)]


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike):
    """Draws the runs' curves (left: train loss; right: valid dashed, test solid RMSE) into
    a PNG, written atomically.

    Returns:
      The matplotlib Figure: axes[0] holds one train-loss line per run, axes[1] one line per
      run and RMSE series present (a series that is null throughout is left out).

    Raises:
      DataError: a run without a readable metrics.jsonl.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = [metrics_path(run) for run in run_dirs]
    runs = [read_metrics(path) for path in paths]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, rmse_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for records, label, color in zip(runs, _labels(paths), colors):
        epochs, values = series(records, "train_loss")
        if epochs:
            loss_ax.plot(epochs, values, color=color, marker=".", label=label)
        for key, style, name in (("valid_rmse", "--", "valid"), ("test_rmse", "-", "test")):
            epochs, values = series(records, key)
            if any(math.isfinite(v) for v in values):
                rmse_ax.plot(epochs, values, style, color=color, marker=".",
                             label=f"{label} {name}")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="train loss")
    rmse_ax.set(title="RMSE (dashed: validation, solid: test)", xlabel="epoch", ylabel="RMSE")
    for ax in (loss_ax, rmse_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return fig
