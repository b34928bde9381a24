"""A fixed split read from files (--train-ratings/--test-ratings/--valid-ratings)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import loading
from autorec_jax.errors import ConfigError, DataError
from tests.synthetic import random_ratings

ROOT = Path(__file__).resolve().parents[1]


def _data_script():
    spec = importlib.util.spec_from_file_location("data_script", ROOT / "scripts" / "data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines))
    return str(path)


def _data(**kw):
    return config_lib.DataConfig(**kw)


def test_round_trip_matches_internal_split(tmp_path):
    r = random_ratings(num_users=40, num_items=30, seed=3)
    src = tmp_path / "all.tsv"
    src.write_text("".join(f"{r.user_ids[u]}\t{r.item_ids[i]}\t{v:g}\t{t}\n"
                           for u, i, v, t in zip(r.users, r.items, r.ratings, r.timestamps)))
    data = _data(ratings=str(src), split="random", valid_ratio=0.1)
    cfg = config_lib.Config(data=data)
    _data_script().split(cfg, str(tmp_path / "out"), as_json=False)
    want = loading.load_split(data, cfg.split_seed)
    got = loading.load_split(_data(train_ratings=str(tmp_path / "out")), cfg.split_seed)
    for w, g in zip(want, got):
        for field in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
            np.testing.assert_array_equal(getattr(g, field), getattr(w, field), err_msg=field)


def test_valid_carved_from_train_file_like_internal(tmp_path):
    r = random_ratings(num_users=30, num_items=20, seed=1)
    lines = [f"{r.user_ids[u]}\t{r.item_ids[i]}\t{v:g}" for u, i, v in
             zip(r.users, r.items, r.ratings)]
    train = _write(tmp_path / "tr.tsv", lines[10:])
    test = _write(tmp_path / "te.tsv", lines[:10])
    full, _, _ = loading.load_split(_data(train_ratings=train, test_ratings=test), 7)
    tr, va, te = loading.load_split(_data(train_ratings=train, test_ratings=test,
                                          valid_ratio=0.2), 7)
    n = len(full)
    assert len(va) == round(0.2 * n) and len(tr) + len(va) == n
    perm = np.random.default_rng([7, 0x76616C69]).permutation(n)
    chosen = np.zeros(n, bool)
    chosen[perm[:round(0.2 * n)]] = True
    np.testing.assert_array_equal(va.ratings, full.ratings[chosen])
    np.testing.assert_array_equal(tr.items, full.items[~chosen])


def test_cold_test_users_and_items_are_kept_in_the_id_space(tmp_path):
    train = _write(tmp_path / "tr.tsv", ["1\t1\t3", "1\t2\t4", "2\t1\t5"])
    test = _write(tmp_path / "te.tsv", ["2\t2\t1", "9\t1\t2", "1\t8\t3"])
    tr, _, te = loading.load_split(_data(train_ratings=train, test_ratings=test), 0)
    assert list(te.user_ids) == [1, 2, 9] and list(te.item_ids) == [1, 2, 8]
    seen_users = np.isin(te.users, tr.users)
    seen_items = np.isin(te.items, tr.items)
    assert list(seen_users) == [True, False, True] and list(seen_items) == [True, True, False]


@pytest.mark.parametrize("case, train_lines, test_lines, expect", [
    ("cross", ["1\t1\t3", "1\t2\t4", "2\t1\t5"], ["2\t2\t1", "1\t2\t2"],
     r"te\.tsv:2: .*also in the training file .*tr\.tsv:2"),
    ("dup", ["1\t1\t3", "1\t2\t4", "1\t1\t5"], ["2\t2\t1"], r"tr\.tsv:3: .*"),
    ("empty", ["1\t1\t3", "2\t2\t4"], [], r"te\.tsv: .*no ratings"),
    ("formats", ["1\t1\t3\t100", "2\t2\t4\t200"], ["1\t2\t1"],
     r"te\.tsv:1: files of different formats"),
    ("cold", ["1\t1\t3", "2\t2\t4"], ["3\t3\t1"], r"all 1 test ratings are cold"),
])
def test_bad_input_one_line_naming_file_and_line(tmp_path, case, train_lines, test_lines,
                                                 expect):
    train = _write(tmp_path / "tr.tsv", train_lines)
    test = _write(tmp_path / "te.tsv", test_lines)
    with pytest.raises(DataError, match=expect) as info:
        loading.load_split(_data(train_ratings=train, test_ratings=test), 0)
    assert "\n" not in str(info.value)


def test_config_refuses_mixed_sources(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        _data(ratings="a.tsv", train_ratings="b.tsv")
    with pytest.raises(ConfigError, match="need data.train_ratings"):
        _data(test_ratings="b.tsv")
    with pytest.raises(DataError, match="needs --test-ratings"):
        loading.load_split(_data(train_ratings=_write(tmp_path / "t.tsv", ["1\t1\t3"])), 0)


def test_label_names_files_and_checksums(tmp_path):
    train = _write(tmp_path / "tr.tsv", ["1\t1\t3", "2\t2\t4"])
    test = _write(tmp_path / "te.tsv", ["1\t2\t1"])
    data = _data(train_ratings=train, test_ratings=test)
    before = loading.dataset_label(data)
    import hashlib
    assert hashlib.sha256(Path(train).read_bytes()).hexdigest() in before
    _write(tmp_path / "tr.tsv", ["1\t1\t3", "2\t2\t5"])
    assert loading.dataset_label(data) != before


def test_parts_from_split_files_match_internal(tmp_path):
    from autorec_jax.data import parts
    r = random_ratings(num_users=40, num_items=30, seed=5)
    src = tmp_path / "all.tsv"
    src.write_text("".join(f"{r.user_ids[u]}\t{r.item_ids[i]}\t{v:g}\t{t}\n"
                           for u, i, v, t in zip(r.users, r.items, r.ratings, r.timestamps)))
    cfg = config_lib.Config(data=_data(ratings=str(src)))
    _data_script().split(cfg, str(tmp_path / "out"), as_json=False)
    cfg_files = config_lib.Config(data=_data(train_ratings=str(tmp_path / "out")))
    a = parts.write_parts(cfg, str(tmp_path / "p_int"), 2)
    b = parts.write_parts(cfg_files, str(tmp_path / "p_files"), 2)
    assert a.meta["fingerprint"] == b.meta["fingerprint"]
    assert [int(n) for n in a.sizes] == [int(n) for n in b.sizes]
    files = sorted((tmp_path / "p_int").glob("part-*.npz"))
    assert len(files) == 2
    for f in files:
        x, y = np.load(f), np.load(tmp_path / "p_files" / f.name)
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{f.name}:{key}")


def test_protocol_plan_over_split_folders(tmp_path):
    from autorec_jax.studies import protocol
    plan = protocol.split_plan(f"files:{tmp_path / 'a'},{tmp_path / 'b'}", config_lib.Config())
    assert [label for label, _ in plan] == ["a", "b"]
    assert [c.data.train_ratings for _, c in plan] == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ConfigError, match="files:DIR1"):
        protocol.split_plan("files:", config_lib.Config())
