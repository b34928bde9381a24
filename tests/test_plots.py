"""Learning-curve plots from synthetic metrics.jsonl files, and the plot CLI."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from autorec_jax.studies import plots
from autorec_jax.errors import DataError

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def ys(line):
    return [float(v) for v in line.get_ydata()]


def test_plot_runs_draws_each_series_of_each_run(tmp_path):
    a = write_run(tmp_path / "seed0", [
        {"epoch": 1, "train_loss": 0.9, "valid_rmse": 1.1, "test_rmse": None},
        {"epoch": 2, "train_loss": 0.7, "valid_rmse": 1.0, "test_rmse": 0.95}])
    b = write_run(tmp_path / "seed1", [
        {"epoch": 1, "train_loss": 0.8}, {"epoch": 2, "train_loss": 0.6, "test_rmse": 0.97}])
    out = tmp_path / "curves.png"
    fig = plots.plot_runs([a, b], out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    loss_ax, rmse_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["seed0", "seed1"]
    assert ys(loss_ax.get_lines()[0]) == [0.9, 0.7] and ys(loss_ax.get_lines()[1]) == [0.8, 0.6]
    lines = {line.get_label(): line for line in rmse_ax.get_lines()}
    assert sorted(lines) == ["seed0 test", "seed0 valid", "seed1 test"]
    assert ys(lines["seed0 valid"]) == [1.1, 1.0]
    assert math.isnan(ys(lines["seed0 test"])[0]) and ys(lines["seed0 test"])[1] == 0.95
    assert list(lines["seed1 test"].get_xdata()) == [2] and ys(lines["seed1 test"]) == [0.97]
    assert lines["seed0 valid"].get_linestyle() == "--"


def test_plot_runs_labels_runs_sharing_a_folder_name_by_path(tmp_path):
    a = write_run(tmp_path / "x" / "run", [{"epoch": 1, "train_loss": 1.0}])
    b = write_run(tmp_path / "y" / "run", [{"epoch": 1, "train_loss": 2.0}])
    fig = plots.plot_runs([a, b], tmp_path / "c.png")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == [str(a), str(b)]


def test_missing_or_malformed_metrics_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plots.plot_runs([tmp_path], tmp_path / "c.png")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not JSON"):
        plots.read_metrics(tmp_path)
    assert not (tmp_path / "c.png").exists()


def test_plot_cli_defaults_to_curves_png_in_the_run(tmp_path, capsys):
    run = write_run(tmp_path / "r", [{"epoch": e, "train_loss": 1.0 / e, "test_rmse": 1 - e / 10}
                                     for e in range(1, 6)])
    spec = importlib.util.spec_from_file_location("plot_cli", REPO / "scripts" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert module.main([str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
