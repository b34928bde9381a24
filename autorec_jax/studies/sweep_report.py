"""A grid's summary as a Markdown table and a figure (`<grid>.md`, `<grid>.png`).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), as in `plots.py`. The
kind of figure follows the grid's overrides: hidden size (log x), depth, encoder x decoder
activation heatmap, else a bar chart of every setting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from autorec_jax.fileio import atomic_path, atomic_write_bytes
from autorec_jax.studies.sweep import summarize_grid

RULE = ("Chosen by mean validation RMSE over seeds (marked **best**); the test RMSE is "
        "reported, never used to choose.")


def _mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"


def markdown_table(summary: pd.DataFrame, grid: str) -> str:
    """The rows of `grid` in a `summarize_grid` frame as a Markdown section."""
    part = summary[summary["grid"] == grid]
    lines = [f"## {grid}", "", RULE, "",
             "| setting | valid RMSE | test RMSE | best epoch | epochs | n |",
             "|---|---|---|---|---|---|"]
    for row in part.itertuples():
        setting = f"**{row.setting}** (best)" if row.best else row.setting
        if row.failed:
            setting += f" ({row.failed} diverged)"
        lines.append(f"| {setting} | {_mean_std(row.valid_rmse_mean, row.valid_rmse_std)} | "
                     f"{_mean_std(row.test_rmse_mean, row.test_rmse_std)} | "
                     f"{row.best_epoch_mean:.1f} | {row.epochs_run_mean:.1f} | {row.n} |")
    return "\n".join(lines) + "\n"


def plot_grid(summary: pd.DataFrame, grid: str, out_path: str | Path):
    """Draws `grid`'s valid (dashed) and test RMSE, mean and std over seeds, into a PNG.

    Returns:
      The matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    part = summary[summary["grid"] == grid].reset_index(drop=True)
    overrides = [json.loads(o) for o in part["overrides"]]
    keys = {k for o in overrides for k in o}
    one_layer = all(len(o.get("hidden", (0,))) == 1 for o in overrides)
    if keys == {"hidden"}:
        kind = "hidden" if one_layer else "depth"
    elif keys == {"activation", "output_activation"}:
        kind = "heatmap"
    else:
        kind = "by" if len(keys) == 2 and "hidden" in keys and one_layer else "bars"
    height = 0.25 * len(part) if kind == "bars" else 0
    fig = Figure(figsize=(7, max(4.5, height)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    title = "RMSE, mean ± std over seeds"
    if kind == "hidden":
        _lines(ax, part, [o["hidden"][0] for o in overrides])
        ax.set(xscale="log", xlabel="hidden units (one layer)")
    elif kind == "depth":
        _lines(ax, part, list(range(len(part))))
        ax.set_xticks(range(len(part)), ["-".join(map(str, o["hidden"])) for o in overrides])
        ax.set(xlabel="hidden layers")
    elif kind == "heatmap":
        _heatmap(fig, ax, part, overrides)
        title = "mean validation RMSE"
    elif kind == "by":
        (other,) = keys - {"hidden"}
        _valid_lines_by(ax, part, overrides, other)
        title = "validation RMSE, mean ± std over seeds"
    else:
        _bars(ax, part)
    ax.set_title(f"{grid}: {title}")
    with atomic_path(Path(out_path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return fig


def _lines(ax, part: pd.DataFrame, x: list) -> None:
    for name, style in (("valid", "--"), ("test", "-")):
        ax.errorbar(x, part[f"{name}_rmse_mean"], yerr=part[f"{name}_rmse_std"].fillna(0),
                    fmt=style, marker="o", capsize=3, label=f"{name} RMSE")
    best = part.index[part["best"]]
    ax.plot([x[i] for i in best], part.loc[best, "valid_rmse_mean"], "k*", markersize=14,
            label="best by validation")
    ax.set(ylabel="RMSE")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _valid_lines_by(ax, part: pd.DataFrame, overrides: list[dict], other: str) -> None:
    """Validation RMSE against hidden units (log x), one line per value of `other`."""
    values = list(dict.fromkeys(o[other] for o in overrides))
    for value in values:
        rows = [i for i, o in enumerate(overrides) if o[other] == value]
        ax.errorbar([overrides[i]["hidden"][0] for i in rows],
                    part.loc[rows, "valid_rmse_mean"],
                    yerr=part.loc[rows, "valid_rmse_std"].fillna(0), marker="o", capsize=3,
                    label=f"{other}={value}")
    best = part.index[part["best"]]
    ax.plot([overrides[i]["hidden"][0] for i in best], part.loc[best, "valid_rmse_mean"],
            "k*", markersize=14, label="best by validation")
    ax.set(xscale="log", xlabel="hidden units (one layer)", ylabel="valid RMSE")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _heatmap(fig, ax, part: pd.DataFrame, overrides: list[dict]) -> None:
    encoders = list(dict.fromkeys(o["activation"] for o in overrides))
    decoders = list(dict.fromkeys(o["output_activation"] for o in overrides))
    grid = np.full((len(encoders), len(decoders)), np.nan)
    for o, value, best in zip(overrides, part["valid_rmse_mean"], part["best"]):
        i, j = encoders.index(o["activation"]), decoders.index(o["output_activation"])
        grid[i, j] = value
        if math.isfinite(value):
            ax.text(j, i, f"{value:.4f}" + ("\nbest" if best else ""), ha="center",
                    va="center", fontsize="small", fontweight="bold" if best else "normal")
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="valid RMSE (mean over seeds)")
    ax.set_xticks(range(len(decoders)), decoders)
    ax.set_yticks(range(len(encoders)), encoders)
    ax.set(xlabel="decoder (output_activation)", ylabel="encoder (activation)")


def _bars(ax, part: pd.DataFrame) -> None:
    y = np.arange(len(part))
    ax.barh(y, part["valid_rmse_mean"], xerr=part["valid_rmse_std"].fillna(0),
            color=["C1" if b else "C0" for b in part["best"]], label="valid RMSE")
    ax.plot(part["test_rmse_mean"], y, "k|", markersize=12, label="test RMSE")
    ax.set_yticks(y, part["setting"], fontsize="small")
    ax.invert_yaxis()
    finite = part["valid_rmse_mean"].dropna()
    if len(finite):
        ax.set_xlim(0.95 * finite.min(), 1.05 * max(finite.max(), part["test_rmse_mean"].max()))
    ax.set(xlabel="RMSE (orange: best by validation)")
    ax.legend(fontsize="small")


def write_report(results: pd.DataFrame, out_dir: str | Path, grid: str) -> tuple[Path, Path]:
    """Writes `out_dir/<grid>.md` and `out_dir/<grid>.png` from results.csv rows.

    Returns:
      (the Markdown path, the PNG path).
    """
    summary = summarize_grid(results[results["grid"] == grid])
    md, png = Path(out_dir) / f"{grid}.md", Path(out_dir) / f"{grid}.png"
    atomic_write_bytes(md, markdown_table(summary, grid).encode())
    plot_grid(summary, grid, png)
    return md, png
