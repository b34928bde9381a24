"""Run records: strict JSON lines (non-finite floats as null) and the CSV view."""

import csv
import json
import math

import pytest

from autorec_jax.run import reporting


def strict_loads(line):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


def test_write_jsonl_writes_non_finite_floats_as_null(tmp_path):
    records = [{"epoch": 1, "train_loss": float("nan"), "test_rmse": 0.9},
               {"epoch": 2, "train_loss": float("inf"),
                "nested": {"a": [1.0, float("-inf")], "b": (float("nan"), "x")}}]
    path = tmp_path / "metrics.jsonl"
    reporting.write_jsonl(path, records)
    got = [strict_loads(line) for line in path.read_text().splitlines()]
    assert got == [{"epoch": 1, "train_loss": None, "test_rmse": 0.9},
                   {"epoch": 2, "train_loss": None,
                    "nested": {"a": [1.0, None], "b": [None, "x"]}}]
    assert math.isnan(records[0]["train_loss"])  # the caller's records are left as they were


def test_write_csv_uses_the_union_of_keys_and_empty_cells_for_null(tmp_path):
    records = [{"epoch": 1, "train_loss": 0.5, "test_rmse": None},
               {"epoch": 2, "train_loss": float("nan"), "valid_rmse": 0.25, "test_rmse": 0.1}]
    path = tmp_path / "metrics.csv"
    reporting.write_csv(path, records)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["epoch", "train_loss", "test_rmse", "valid_rmse"],
                    ["1", "0.5", "", ""], ["2", "", "0.1", "0.25"]]
    reporting.write_csv(path, [])
    assert path.read_text() == ""


def test_strict_parser_refuses_what_json_dumps_writes_by_default():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"x": float("nan")}))
