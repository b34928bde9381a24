"""Thinned and rescaled rating data (data/variants.py and `scripts/data.py thin|rescale`)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from autorec_jax.data import loading, variants
from autorec_jax import config as config_lib
from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent


def data_script():
    spec = importlib.util.spec_from_file_location("data_script", REPO / "scripts" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thin_is_the_seeded_uniform_sample_numpy_draws():
    r = random_ratings(num_users=30, num_items=20, seed=3)
    out = variants.thin(r, 0.25, seed=7)
    expect = np.sort(np.random.default_rng(7).choice(len(r), round(0.25 * len(r)),
                                                     replace=False))
    np.testing.assert_array_equal(out.users, r.users[expect])
    np.testing.assert_array_equal(out.items, r.items[expect])
    np.testing.assert_array_equal(out.ratings, r.ratings[expect])
    assert (out.num_users, out.num_items) == (r.num_users, r.num_items)
    assert len(variants.thin(r, 0.25, seed=8).ratings) == len(expect)
    assert not np.array_equal(variants.thin(r, 0.25, seed=8).users, out.users)
    with pytest.raises(ValueError, match="fraction"):
        variants.thin(r, 0.0, seed=0)


def test_rescale_multiplies_every_rating_and_keeps_the_rest():
    r = random_ratings(num_users=10, num_items=8, seed=1)
    out = variants.rescale(r, 20)
    np.testing.assert_array_equal(out.ratings, r.ratings.astype(np.float64) * 20)
    np.testing.assert_array_equal(out.users, r.users)
    np.testing.assert_array_equal(out.timestamps, r.timestamps)
    with pytest.raises(ValueError, match="factor"):
        variants.rescale(r, -1.0)


def test_data_cli_thin_and_rescale_write_files_the_reader_loads(tmp_path, capsys):
    r = random_ratings(num_users=30, num_items=20, seed=9)
    source = tmp_path / "ratings.tsv"
    source.write_text(udata_text(r))
    script = data_script()
    assert script.main(["thin", str(source), "--fraction", "0.5", "--seed", "4",
                        "--out", str(tmp_path / "thin.tsv")]) == 0
    assert script.main(["rescale", str(source), "--factor", "20",
                        "--out", str(tmp_path / "x20.tsv")]) == 0
    load = lambda p: loading.load_ratings(config_lib.replace(config_lib.d2l(),
                                                              ratings=str(p)).data)
    original, thinned, scaled = load(source), load(tmp_path / "thin.tsv"), load(
        tmp_path / "x20.tsv")
    pick = np.sort(np.random.default_rng(4).choice(len(original), round(0.5 * len(original)),
                                                   replace=False))
    raw = lambda x, idx=slice(None): sorted(zip(x.user_ids[x.users[idx]].tolist(),
                                                x.item_ids[x.items[idx]].tolist(),
                                                x.ratings[idx].tolist()))
    assert raw(thinned) == raw(original, pick)
    assert raw(scaled) == [(u, i, v * 20) for u, i, v in raw(original)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.tsv", "thin.tsv",
                                                          "x20.tsv"]  # no temporaries left
    with pytest.raises(SystemExit) as exit_:
        script.main(["thin", str(source), "--fraction", "1.5", "--out", str(tmp_path / "b")])
    assert exit_.value.code == 2 and "--fraction must be in (0, 1]" in capsys.readouterr().err
