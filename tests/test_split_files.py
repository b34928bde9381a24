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


BAD_INPUT = [
    ("cross", ["1\t1\t3", "1\t2\t4", "2\t1\t5"], ["2\t2\t1", "1\t2\t2"], None,
     r"te\.tsv:2: \(user 1, item 2\) is also in the training file \(.*tr\.tsv:2\)"),
    ("train-valid", ["1\t1\t3", "2\t2\t4"], ["1\t2\t1"], ["2\t1\t3", "2\t2\t5"],
     r"va\.tsv:2: \(user 2, item 2\) is also in the training file \(.*tr\.tsv:2\)"),
    ("valid-test", ["1\t1\t3", "2\t2\t4"], ["1\t2\t1", "2\t1\t2"], ["3\t3\t2", "2\t1\t5"],
     r"te\.tsv:2: \(user 2, item 1\) is also in the validation file \(.*va\.tsv:2\)"),
    ("text-ids", ["a\t1\t3", "b\t2\t4"], ["b\t1\t1", "a\t2\t2", "a\t1\t5"], None,
     r"te\.tsv:3: \(user 'a', item '1'\) is also in the training file \(.*tr\.tsv:1\)"),
    ("dup", ["1\t1\t3", "1\t2\t4", "1\t1\t5"], ["2\t2\t1"], None,
     r"tr\.tsv:3: user 1 rates item 1 again"),
    ("empty", ["1\t1\t3", "2\t2\t4"], [], None, r"te\.tsv: .*no ratings"),
    ("fields", ["1\t1\t3\t100", "2\t2\t4\t200"], ["1\t2\t1"], None,
     r"te\.tsv:1: files of different formats: 3 fields \(user,item,rating\) here, 4 fields "
     r"\(user,item,rating,timestamp\) in the training file .*tr\.tsv; write every split"),
    ("separator", ["1\t1\t3", "2\t2\t4"], ["", "1,2,1", "2,1,2"], None,
     r"te\.tsv:2: files of different formats: separator ',' here, separator '\\t' in the training"),
    ("header", ["user\titem\trating", "1\t1\t3", "2\t2\t4"], ["1\t2\t1"], None,
     r"te\.tsv:1: files of different formats: no header line here, a header line in the "
     r"training"),
    ("header-valid", ["1\t1\t3", "2\t2\t4"], ["1\t2\t1"], ["u\ti\tr", "2\t1\t5"],
     r"va\.tsv:1: files of different formats: a header line here, no header"),
    ("id-kind", ["1\t1\t3", "2\t2\t4"], ["x\t2\t1"], None,
     r"te\.tsv:1: files of different formats: text user ids here, integer in the training"),
    ("cold", ["1\t1\t3", "2\t2\t4"], ["3\t3\t1"], None, r"all 1 test ratings are cold"),
]


@pytest.mark.parametrize("case, train_lines, test_lines, valid_lines, expect", BAD_INPUT,
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_input_one_line_naming_file_and_line(tmp_path, case, train_lines, test_lines,
                                                 valid_lines, expect):
    train = _write(tmp_path / "tr.tsv", train_lines)
    test = _write(tmp_path / "te.tsv", test_lines)
    valid = None if valid_lines is None else _write(tmp_path / "va.tsv", valid_lines)
    with pytest.raises(DataError, match=expect) as info:
        loading.load_split(_data(train_ratings=train, test_ratings=test,
                                 valid_ratings=valid), 0)
    assert "\n" not in str(info.value) and "np." not in str(info.value)


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


def _ratings_file(tmp_path):
    r = random_ratings(num_users=24, num_items=40, density=0.15, seed=3)
    src = tmp_path / "all.tsv"
    src.write_text("".join(f"{r.user_ids[u]}\t{r.item_ids[i]}\t{v:g}\t{t}\n"
                           for u, i, v, t in zip(r.users, r.items, r.ratings, r.timestamps)))
    return src


def _run_config(**overrides):
    """The runs of the tests below: one shape of data and one config, so that they share
    their compilations (full batch: a run from parts draws the same single batch)."""
    from test_train import toy_config
    return toy_config(**{"epochs": 2, "parallel": "jit", "valid_ratio": 0.2, "batch_size": 0,
                         "last_batch": "pad", "cold_start": "item-mean", **overrides})


def _split_folder(tmp_path):
    """(all.tsv, the folder `data.py split` writes from it with a validation part)."""
    src = _ratings_file(tmp_path)
    _data_script().split(_run_config(ratings=str(src)), str(tmp_path / "split"), as_json=False)
    return src, tmp_path / "split"


def test_a_run_from_the_written_split_is_bit_identical_to_the_internal_split(tmp_path):
    """The issue's figure on synthetic data: split made internally, written by
    `data.py split`, trained on the folder: the same history, params and test RMSE, bit for
    bit."""
    import jax
    from autorec_jax.run.experiment import train_and_evaluate
    src, folder = _split_folder(tmp_path)
    a = train_and_evaluate(_run_config(ratings=str(src)))
    b = train_and_evaluate(_run_config(train_ratings=str(folder)))
    assert b.summary["data"]["valid_ratings"] == a.summary["data"]["valid_ratings"] > 0
    assert b.summary["test_rmse"] == a.summary["test_rmse"]
    assert [r["train_loss"] for r in b.history] == [r["train_loss"] for r in a.history]
    for x, y in zip(jax.tree.leaves(jax.device_get(a.state.params)),
                    jax.tree.leaves(jax.device_get(b.state.params))):
        np.testing.assert_array_equal(x, y)


def test_records_name_the_files_and_resume_refuses_a_changed_one(tmp_path):
    import hashlib
    import json
    from autorec_jax.errors import CheckpointError
    from autorec_jax.run.experiment import train_and_evaluate
    _, folder = _split_folder(tmp_path)
    config = _run_config(train_ratings=str(folder), epochs=1)
    out = tmp_path / "run"
    train_and_evaluate(config, out)
    want = {part: {"path": str(folder / f"{part}.tsv"),
                   "sha256": hashlib.sha256((folder / f"{part}.tsv").read_bytes()).hexdigest()}
            for part in ("train", "valid", "test")}
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert run["split_files"] == want and summary["data"]["split_files"] == want
    assert summary["data"]["split"] == summary["protocol"]["split"] == "files"
    assert "test_ratio" not in summary["protocol"]
    train_and_evaluate(config, out, resume=True)  # unchanged: resumed (nothing left to do)
    # Content changed, same path, same parsed ratings (a blank line): the checksum differs.
    test_file = folder / "test.tsv"
    test_file.write_text(test_file.read_text() + "\n")
    with pytest.raises(CheckpointError, match=r"cannot resume: the test file .*test\.tsv "
                                              r"changed \(sha256 ") as info:
        train_and_evaluate(config, out, resume=True)
    assert "\n" not in str(info.value)


def test_parts_from_split_files_record_them_and_train_like_the_files(tmp_path, capsys):
    """`data.py parts --train-ratings`: meta.json names the files; a full-batch run from the
    parts gives the test RMSE of the same run from the files (sums in another order only);
    a run naming both the parts and the files is checked against the parts' record."""
    import json
    from autorec_jax.data import parts, split_files
    from autorec_jax.run.experiment import train_and_evaluate
    src, folder = _split_folder(tmp_path)
    flags = ["--valid-ratio", "0.2", "--cold-start", "item-mean"]
    main = _data_script().main
    assert main(["parts", "--train-ratings", str(folder), "--count", "2", "--out",
                 str(tmp_path / "p2"), *flags]) == 0
    files = _run_config(train_ratings=str(folder))
    info = parts.read_info(tmp_path / "p2")
    assert info.meta["split_files"] == split_files.file_checksums(files.data)
    assert info.meta["data"] == {"orientation": "item", "valid_ratio": 0.2}
    from_files = train_and_evaluate(files)
    from_parts = train_and_evaluate(config_lib.replace(files, train_ratings=None,
                                                       parts=str(tmp_path / "p2")))
    assert from_parts.experiment.data.parts is not None
    for key in ("test_rmse", "valid_rmse", "test_cold_rmse"):
        assert from_parts.summary[key] == pytest.approx(from_files.summary[key], abs=1e-6)
    for key in ("split_files", "split", "dataset"):
        assert from_parts.summary["data"][key] == from_files.summary["data"][key], key
    both = config_lib.replace(files, parts=str(tmp_path / "p2"))
    parts.check_config(info, both)  # the same files: accepted
    valid = (folder / "valid.tsv").read_text()
    (folder / "valid.tsv").unlink()
    with pytest.raises(ConfigError, match=r"does not match --train-ratings: the valid file "
                                          r".*valid\.tsv is no longer given"):
        parts.check_config(info, both)
    (folder / "valid.tsv").write_text(valid)
    (folder / "train.tsv").write_text((folder / "train.tsv").read_text() + "\n")
    with pytest.raises(ConfigError, match=r"the train file .*train\.tsv changed"):
        parts.check_config(info, both)
    assert main(["parts", str(src), "--count", "2", "--out", str(tmp_path / "p_src"),
                 *flags]) == 0
    assert "split_files" not in json.loads((tmp_path / "p_src" / "meta.json").read_text())
    with pytest.raises(ConfigError, match=r"was not written from split files"):
        parts.check_config(parts.read_info(tmp_path / "p_src"), both)
    capsys.readouterr()
    for argv, message in (
            (["parts", str(src), "--train-ratings", str(folder), "--count", "2"], "both name"),
            (["parts", "--count", "2"], "parts needs SOURCE or --train-ratings"),
            (["stats", "ml-100k", "--train-ratings", str(folder)], "is for `parts`")):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *(["--out", str(tmp_path / "p_bad")] if argv[0] == "parts" else [])])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "p_bad").exists()
