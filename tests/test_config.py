"""Config validation, replace(), presets and the flags derived from the dataclasses."""

import argparse
import dataclasses

import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import coldstart, readers
from autorec_jax.data.loading import file_format
from autorec_jax.run import cli
from autorec_jax.errors import ConfigError


def test_d2l_preset_is_the_books_recipe():
    c = config_lib.d2l()
    assert (c.model.hidden, c.model.activation, c.model.output_activation) == (
        (500,), "sigmoid", "identity")
    assert (c.model.dropout, c.model.init_std) == (0.05, 0.01)
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.optim.decay_style) == (
        "adam", 0.002, 1e-5, "coupled")
    assert (c.train.epochs, c.train.batch_size, c.train.last_batch, c.train.loss) == (
        25, 256, "rollover", "book")
    assert (c.data.dataset, c.data.split, c.data.test_ratio, c.seed) == (
        "ml-100k", "random", 0.1, 0)
    # float32 matmuls on every device (TPUs default to one bf16 pass); never CPU by accident.
    assert (c.model.matmul_precision, c.train.allow_cpu) == ("highest", False)


@pytest.mark.parametrize("field, value, message", [
    ("dropout", 1.0, "model.dropout must be in [0, 1)"),
    ("dropout", -0.1, "model.dropout"),
    ("hidden", (0,), "model.hidden"),
    ("hidden", (), "model.hidden"),
    ("activation", "swish", "model.activation must be one of"),
    ("lr", 0.0, "optim.lr must be > 0"),
    ("lr", float("nan"), "optim.lr"),
    ("weight_decay", -1e-5, "optim.weight_decay"),
    ("epochs", 0, "train.epochs"),
    ("batch_size", 2.5, "train.batch_size"),
    ("parallel", "gpu", "train.parallel"),
    ("test_ratio", 1.0, "data.test_ratio"),
    ("split", "temporal", "data.split"),
    ("seed", -1, "seed must be"),
    ("seed", 2**32, "seed must be an integer in [0, 2"),
    ("split_seed", 2**32, "data.split_seed must be None or an integer in [0, 2"),
    ("dataset", "ml-2m", "data.dataset must be one of ml-100k, ml-1m"),
    ("dataset", "", "data.dataset"),
    ("decay_biases", "yes", "optim.decay_biases"),
    ("matmul_precision", "bf16", "model.matmul_precision must be one of highest, high, default"),
    ("allow_cpu", "yes", "train.allow_cpu"),
])
def test_replace_rejects_impossible_values_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        config_lib.replace(config_lib.d2l(), **{field: value})


def test_largest_seeds_are_accepted():
    c = config_lib.replace(config_lib.d2l(), seed=2**32 - 1, split_seed=2**32 - 1)
    assert c.split_seed == 2**32 - 1


def test_dataset_names_match_the_registry():
    from autorec_jax.data import movielens
    assert config_lib.DATASETS == movielens.DATASETS


def test_replace_accepts_plain_and_dotted_names_and_keeps_the_rest():
    c = config_lib.replace(config_lib.d2l(), hidden=(8, 4, 8), **{"optim.lr": 0.01}, seed=3)
    assert c.model.hidden == (8, 4, 8) and c.optim.lr == 0.01 and c.seed == 3
    assert c.model.dropout == 0.05 and c.train.epochs == 25


def test_replace_rejects_unknown_field():
    with pytest.raises(ConfigError, match="unknown config field 'hiden'"):
        config_lib.replace(config_lib.d2l(), hiden=(3,))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config_lib.d2l().model.hidden = (3,)


def test_field_names_are_unique_across_groups():
    names = [f.name for _, f in cli._fields()]
    assert len(names) == len(set(names))


def test_split_seed_defaults_to_the_root_seed():
    assert config_lib.replace(config_lib.d2l(), seed=4).split_seed == 4
    assert config_lib.replace(config_lib.d2l(), seed=4, split_seed=1).split_seed == 1


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser)
    return cli.config_from_args(parser.parse_args(argv), config_lib.d2l())


def test_every_field_is_a_flag_with_typed_parsing():
    c = _parse(["--hidden", "64,32,64", "--dropout", "0", "--batch-size", "100",
                "--decay-biases", "false", "--data-dir", "none", "--split-seed", "7",
                "--train.eval_every", "5", "--model.activation", "relu", "--lr", "1e-3"])
    assert c.model.hidden == (64, 32, 64) and c.model.dropout == 0.0
    assert c.train.batch_size == 100 and c.optim.decay_biases is False
    assert c.data.data_dir is None and c.data.split_seed == 7 and c.train.eval_every == 5
    assert c.model.activation == "relu" and c.optim.lr == 1e-3


def test_flags_not_given_keep_the_preset():
    assert _parse([]) == config_lib.d2l()


def test_flag_with_impossible_value_raises_config_error():
    with pytest.raises(ConfigError, match="train.batch_size"):
        _parse(["--batch-size", "-1"])
    assert _parse(["--batch-size", "0"]).train.batch_size == 0  # full batch


def test_unknown_flag_and_unparsable_value_exit_with_status_2():
    for argv in (["--bogus", "1"], ["--hidden", "x"], ["--decay-biases", "maybe"]):
        with pytest.raises(SystemExit) as exit_info:
            _parse(argv)
        assert exit_info.value.code == 2


@pytest.mark.parametrize("argv", [["--hidden", "500,,2"], ["--hidden", "500,"],
                                  ["--hidden", ""], ["--rating-scale", "1,,5"]])
def test_tuple_flag_with_an_empty_element_exits_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument {argv[0]}/" in err and f"empty element in {argv[1]!r}" in err


def test_default_columns_take_an_optional_timestamp():
    data = config_lib.d2l().data
    assert data.columns is None and file_format(data).columns is None
    c = _parse(["--columns", "user,item,rating,-"])
    assert file_format(c.data).columns == ("user", "item", "rating", "-")


def test_config_choices_match_the_data_layer():
    # config validates without importing data/ (which sits below it): the copies must agree.
    assert config_lib.COLUMN_ROLES == readers.ROLES and config_lib.SKIP_COLUMN == readers.SKIP
    assert config_lib.HEADER_CHOICES == readers.HEADER_CHOICES
    assert config_lib.ID_TYPES == readers.ID_TYPES
    assert config_lib.ORIENTATIONS == coldstart.ORIENTATIONS
    assert config_lib.COLD_START_RULES == coldstart.COLD_START_RULES
    assert config_lib.COLD_START_NUMBER.pattern == coldstart.COLD_START_NUMBER.pattern


@pytest.mark.parametrize("fields, name", [
    ({"columns": "user,item"}, "data.columns"), ({"columns": "user,item,rating,stars"},
                                                 "data.columns"),
    ({"header": "maybe"}, "data.header"), ({"id_type": "float"}, "data.id_type"),
    ({"sep": ""}, "data.sep")])
def test_impossible_file_formats_are_refused_by_the_config(fields, name):
    with pytest.raises(ConfigError, match=name):
        dataclasses.replace(config_lib.d2l().data, **fields)
