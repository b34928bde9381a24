"""Repeated splits: split plans, resumable runs of one config over them, paired comparison.

A protocol folder holds one run folder per split (`<out>/<label>/`), `results.json` (each
split's config and row: the record a resumed protocol trusts), `results.csv` (the rows) and
`report.md`, every file written whole to a temp file and renamed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd

from autorec_jax.run import multi, preflight, reporting
from autorec_jax.studies import stats
from autorec_jax.config import SEED_LIMIT, Config, flatten, replace, to_dict
from autorec_jax.fileio import atomic_write_bytes
from autorec_jax.errors import ConfigError
from autorec_jax.run.experiment import train_and_evaluate

log = logging.getLogger(__name__)

PLAN_FORMS = ("book:A-B (the book's random split, seeds A..B)", "book:N (seeds 0..N-1)",
              "uA-uB (MovieLens 100K's official uA..uB, e.g. u1-u5)", "uK (one of them)",
              "kfold:K (folds 0..K-1 of one seeded K-fold partition)",
              "files:DIR1,DIR2,... (fixed splits from folders of train.*/test.* files)")
# The fields a plan sets per split; every other field is the protocol's config.
PLAN_FIELDS = (("seed",), ("data", "split"), ("data", "split_seed"), ("data", "fold"),
               ("data", "folds"), ("data", "train_ratings"))
RESULTS, TABLE, REPORT = "results.json", "results.csv", "report.md"


class ProtocolResult(NamedTuple):
    table: pd.DataFrame  # one row per split of the plan, in plan order
    test_rmse: dict      # stats.mean_ci of its test_rmse column


def split_plan(name: str, config: Config) -> list[tuple[str, Config]]:
    """The (label, config) of each split a plan name stands for.

    book:A-B / book:N: the book's "random" split with seed s, setting both `seed` and
      `data.split_seed` to s, so the split, the initialisation, shuffling and dropout all
      change with s (labels seed<s>).
    uA-uB / uK: MovieLens 100K's official splits ml100k-uK; `config.seed` for every one
      (labels u<K>).
    kfold:K: folds 0..K-1, all with split seed `config.split_seed`, so the test folds
      partition the data; the model seed stays `config.seed` (labels fold<k>).
    files:DIR1,DIR2,...: repeated fixed splits, one per folder holding train.*, test.*
      (and valid.*), e.g. `scripts/data.py split` outputs; `config.seed` for every one
      (labels: the folder names).

    Raises:
      ConfigError: a name of none of these forms (the message lists them).
    """
    text = name.strip()
    if match := re.fullmatch(r"book:(\d+)(?:-(\d+))?", text):
        first, last = ((int(match[1]), int(match[2])) if match[2] is not None
                       else (0, int(match[1]) - 1))
        if first <= last < SEED_LIMIT:
            return [(f"seed{s}", replace(config, split="random", seed=s, split_seed=s))
                    for s in range(first, last + 1)]
    elif match := re.fullmatch(r"u([1-5])(?:-u([1-5]))?", text):
        first, last = int(match[1]), int(match[2] or match[1])
        if first <= last:
            return [(f"u{k}", replace(config, split=f"ml100k-u{k}"))
                    for k in range(first, last + 1)]
    elif match := re.fullmatch(r"kfold:(\d+)", text):
        folds = int(match[1])
        if folds >= 2:
            return [(f"fold{k}", replace(config, split="kfold", folds=folds, fold=k,
                                         split_seed=config.split_seed))
                    for k in range(folds)]
    elif text.startswith("files:"):
        folders = [f.strip() for f in text[len("files:"):].split(",") if f.strip()]
        labels = [Path(f).name or f for f in folders]
        if folders and len(set(labels)) == len(labels):
            return [(label, replace(config, ratings=None, train_ratings=folder,
                                    test_ratings=None, valid_ratings=None))
                    for label, folder in zip(labels, folders)]
    raise ConfigError(f"--splits must be one of {'; '.join(PLAN_FORMS)}; got {name!r}")


def run_protocol(config: Config, plan, out_dir=None, *, ratings=None,
                 train_fn: Callable = train_and_evaluate, batch_members: bool = True,
                 **seams) -> ProtocolResult:
    """Trains and evaluates one config on every split of `plan`; resumable.

    Args:
      config: the protocol's config (the plan changes only its split and seed fields).
      plan: `split_plan(...)`'s list of (label, Config), or a plan name.
      out_dir: the protocol folder (see the module docstring), or None to keep nothing.
        Splits already in its results.json are not run again; a split killed mid-run is
        resumed from its run folder's checkpoint.
      ratings: passed to `train_fn` (synthetic data; default: each config's dataset).
      train_fn: `train_and_evaluate` or a stand-in with its signature.
      batch_members: with the default `train_fn`, train the splits not yet started whose
        shapes agree together, in one compiled step (`multi.train_many`: each equals its
        run alone to float32 round-off); a split with a folder to resume runs alone.
        False: one split at a time.
      **seams: passed to `train_fn` (optimizer=, loss_fn=, ...), e.g. a research change.

    Returns:
      ProtocolResult(table, test_rmse): the plan's rows {label, split, seed, split_seed,
      test_rmse, test_mae, test_count, valid_rmse, ..., best_epoch, epochs_run,
      train_seconds} and `stats.mean_ci` of test RMSE.

    Raises:
      ConfigError: a bad plan, or `out_dir` holding results of another config or seams.
    """
    if isinstance(plan, str):
        plan = split_plan(plan, config)
    labels = [label for label, _ in plan]
    if not plan or len(set(labels)) != len(labels):
        raise ConfigError(f"a plan needs distinct split labels, got {labels}")
    identity = {"config": _protocol_fields(to_dict(config)), "seams": _seam_names(seams)}
    for label, split_config in plan:
        _check_same(identity["config"], _protocol_fields(to_dict(split_config)),
                    f"split {label} of the plan differs from the protocol's config in more "
                    "than its split and seed", there="in the protocol", here="the split")
    root = None if out_dir is None else preflight.check_out_dir(out_dir)
    done = _load(root, identity)
    todo = []
    for label, split_config in plan:
        if label in done:
            _check_same(done[label]["config"], _json(to_dict(split_config)),
                        f"split {label} in {root} was run with another config",
                        here="this plan", hint="; use another --out folder")
            log.info("split %s: already in %s, skipped", label, root / RESULTS)
        else:
            todo.append((label, split_config))
    position = {label: index for index, label in enumerate(labels, 1)}
    for job in _jobs(todo, root, batch_members and train_fn is train_and_evaluate):
        results = None
        if len(job) > 1:
            log.info("splits %s: %d members in one compiled step",
                     ", ".join(label for label, _ in job), len(job))
            try:
                results = multi.train_many(
                    [c for _, c in job], None if root is None else [root / label
                                                                    for label, _ in job],
                    ratings=ratings, **seams)
            except multi.MembersDiffer as why:
                log.info("splits %s run one at a time: %s", ", ".join(lb for lb, _ in job),
                         why)
        if results is None:
            results = []
            for label, split_config in job:
                log.info("split %d/%d: %s", position[label], len(plan), label)
                # A folder left by a killed protocol holds the split's latest checkpoint.
                kwargs = {} if root is None else {"resume": (root / label).exists()}
                results.append(train_fn(split_config, None if root is None else root / label,
                                        ratings=ratings, **kwargs, **seams))
                _record(done, root, identity, label, split_config, results[-1])
        else:
            for (label, split_config), result in zip(job, results):
                _record(done, root, identity, label, split_config, result)
    table = pd.DataFrame([done[label]["row"] for label in labels])
    return ProtocolResult(table, stats.mean_ci(table["test_rmse"]))


def _jobs(todo: list, root: Path | None, batch: bool) -> list[list]:
    """The splits to run, grouped: members that may share a step (not yet started) go
    together; a split with a folder to resume, or alone in its group, runs by itself."""
    if not batch:
        return [[item] for item in todo]
    fresh = [item for item in todo if root is None or not (root / item[0]).exists()]
    jobs = [[item] for item in todo if item not in fresh]
    jobs += [[fresh[i] for i in group]
             for group in multi.group_members([c for _, c in fresh])]
    return jobs


def _record(done, root, identity, label, split_config, result) -> None:
    done[label] = {"config": _json(to_dict(split_config)),
                   "row": summary_row(label, split_config, result.summary)}
    log.info("split %s: test RMSE %.4f", label, result.summary["test_rmse"])
    if root is not None:
        _save(root, identity, done)


def summary_row(label: str, config: Config, summary: dict) -> dict:
    """A split's results.csv row: its split, seeds, every scalar test_*/valid_* score,
    the epoch whose params were scored, and the training time."""
    row = {"label": label, "split": config.data.split, "seed": config.seed,
           "split_seed": config.split_seed}
    if config.data.split == "kfold":
        row["fold"] = config.data.fold
    row.update({key: value for key, value in summary.items()
                if key.startswith(("test_", "valid_")) and isinstance(value, (int, float))})
    selection = summary.get("selection") or {}
    row["best_epoch"] = selection.get("best_epoch", summary.get("epochs_run"))
    row["epochs_run"] = summary.get("epochs_run")
    row["train_seconds"] = summary.get("train_seconds")
    return row


def read_results(results) -> pd.DataFrame:
    """A protocol's rows: a DataFrame as given, or a protocol folder's results.csv."""
    if isinstance(results, pd.DataFrame):
        return results
    path = Path(results).expanduser() / TABLE
    if not path.is_file():
        raise ConfigError(f"{path.parent} has no {TABLE}: not a protocol folder")
    return pd.read_csv(path, dtype={"label": str})


def compare(results_a, results_b, *, metric: str = "test_rmse", level: float = 0.95) -> dict:
    """Paired comparison of two protocols over the same splits, paired by label.

    Args:
      results_a, results_b: `run_protocol` tables or protocol folders.
      metric: the column compared: lower is better for RMSE and MAE, higher for a
        ranking metric ("test_ndcg@10", "test_recall@10", "test_heldout_ndcg", ...).
      level: the interval's coverage.

    Returns:
      `stats.paired_t` of a - b plus {metric, labels, mean_a, mean_b, better ("a", "b",
      or None when the differences are all 0)}.

    Raises:
      ConfigError: labels missing on one side (named), repeated, or no `metric` column.
    """
    a, b = read_results(results_a), read_results(results_b)
    for name, table in (("a", a), ("b", b)):
        if metric not in table or "label" not in table:
            raise ConfigError(f"results {name} have no label or {metric} column")
        repeated = sorted(set(table["label"][table["label"].duplicated()]))
        if repeated:
            raise ConfigError(f"results {name} repeat the split labels {repeated}")
    labels = list(a["label"])
    only_a = [x for x in labels if x not in set(b["label"])]
    only_b = [x for x in b["label"] if x not in set(labels)]
    if only_a or only_b:
        raise ConfigError(f"the results cover different splits: only in a {only_a}, "
                          f"only in b {only_b}")
    values_a = a.set_index("label")[metric].loc[labels].to_numpy(float)
    values_b = b.set_index("label")[metric].loc[labels].to_numpy(float)
    result = stats.paired_t(values_a, values_b, level)
    sign = -1 if higher_is_better(metric) else 1
    better = None if result["mean_diff"] == 0 else "a" if sign * result["mean_diff"] < 0 \
        else "b"
    return {**result, "metric": metric, "labels": labels, "mean_a": float(values_a.mean()),
            "mean_b": float(values_b.mean()), "better": better}


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a results column is better (ranking metrics)."""
    return not metric.endswith(("rmse", "mae"))


def format_mean_ci(ci: dict, name: str = "test RMSE") -> str:
    """'test RMSE mean 0.9008 ± 0.0046 (95% CI [0.8962, 0.9054], std 0.0037, n=5)'."""
    if ci["n"] < 2:
        return f"{name} mean {ci['mean']:.4f} (n={ci['n']}: {ci['note']})"
    return (f"{name} mean {ci['mean']:.4f} ± {ci['half_width']:.4f} ({ci['level']:.0%} CI "
            f"[{ci['ci_low']:.4f}, {ci['ci_high']:.4f}], std {ci['std']:.4f}, n={ci['n']})")


def format_comparison(result: dict) -> list[str]:
    """The lines `scripts/compare.py` prints for a `compare` result."""
    name, n = result["metric"].replace("_", " ").replace("rmse", "RMSE"), result["n"]
    lines = [f"{name}: a mean {result['mean_a']:.4f}, b mean {result['mean_b']:.4f} "
             f"over {n} paired splits"]
    if n < 2:
        return lines + [f"note: {result['note']}"]
    lines.append(f"difference a - b: mean {result['mean_diff']:+.4f} ({result['level']:.0%} "
                 f"CI [{result['ci_low']:+.4f}, {result['ci_high']:+.4f}]), "
                 f"t = {result['t']:.3f}, df = {result['df']}, p = {result['p_value']:.4g} "
                 "(paired t, two-sided)")
    alpha = 1 - result["level"]
    if result["better"] is None:
        lines.append("a and b score the same on every split")
    else:
        verdict = ("significant" if result["p_value"] < alpha else "not significant")
        direction = "higher" if higher_is_better(result["metric"]) else "lower"
        lines.append(f"{result['better']} is better ({direction} {name}); the difference is "
                     f"{verdict} at the {alpha:.0%} level")
    if n < 3:
        lines.append(f"note: only n={n} paired splits (df={n - 1}): the interval is very "
                     "wide; run more splits")
    if result["note"]:
        lines.append(f"note: {result['note']}")
    return lines


def _json(obj):
    """`obj` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj))


def _protocol_fields(config_dict: dict) -> dict:
    """A config dict without the fields a plan sets per split."""
    out = _json(config_dict)
    for path in PLAN_FIELDS:
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        parent.pop(path[-1], None)
    return out


def _seam_names(seams: dict) -> dict:
    return {name: getattr(value, "__qualname__", None) or type(value).__name__
            for name, value in sorted(seams.items()) if value is not None}


def _check_same(first: dict, second: dict, message: str, *, there: str = "there",
                here: str = "this protocol", hint: str = "") -> None:
    """Raises ConfigError(message) naming the (first 3) fields in which the dicts differ."""
    a, b = flatten(first), flatten(second)
    diffs = [f"{k}: {a.get(k)!r} {there}, {b.get(k)!r} in {here}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        more = "; ..." if len(diffs) > 3 else ""
        raise ConfigError(f"{message} ({'; '.join(diffs[:3])}{more}){hint}")


def _load(root: Path | None, identity: dict) -> dict:
    """The splits done in `root` (label -> {config, row}), after checking its identity."""
    if root is None or not (root / RESULTS).exists():
        return {}
    saved = json.loads((root / RESULTS).read_text())
    for key, what in (("config", "config"), ("seams", "set of seams")):
        _check_same(saved["identity"][key], identity[key],
                    f"{root} holds results of another {what}",
                    hint="; use another --out folder")
    return {entry["row"]["label"]: entry for entry in saved["splits"]}


def _save(root: Path, identity: dict, done: dict) -> None:
    """results.json first (what a resumed protocol trusts), then the table and report."""
    rows = [entry["row"] for entry in done.values()]
    # Not sorted: each row keeps its column order.
    record = reporting.finite_or_none({"identity": identity, "splits": list(done.values())})
    atomic_write_bytes(root / RESULTS, (json.dumps(record, indent=1) + "\n").encode())
    reporting.write_csv(root / TABLE, rows)
    atomic_write_bytes(root / REPORT, report_markdown(pd.DataFrame(rows)).encode())


def report_markdown(table: pd.DataFrame) -> str:
    """report.md: a Markdown table of the splits and the mean ± CI line."""
    columns = [c for c in ("label", "split", "seed", "split_seed", "fold", "test_rmse",
                           "test_mae", *RANKING_COLUMNS, "valid_rmse", "best_epoch")
               if c in table]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) and c.startswith(
                     ("test_", "valid_")) else "" if pd.isna(row[c]) else str(row[c])
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    means = [format_mean_ci(stats.mean_ci(table[c]), c.replace("_", " ").replace(
                 "rmse", "RMSE")) for c in ("test_rmse", *RANKING_COLUMNS) if c in table]
    return (f"# Repeated splits: {len(table)}\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(means) + "\n")


# The ranking columns report.md shows beside RMSE (results.csv holds every metric).
RANKING_COLUMNS = ("test_heldout_ndcg", "test_ndcg@10", "test_recall@10")
