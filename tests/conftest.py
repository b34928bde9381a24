"""Test setup that must run before JAX does any work: CPU backend, 8 fake devices, and one
persistent compilation cache for the whole test run.

The cache lives in a folder of this run alone (shared by its xdist workers and the scripts
the tests start, through JAX_COMPILATION_CACHE_DIR and AUTOREC_JAX_JIT_CACHE, so no test
writes to the user's own cache) and is removed when the run ends: many
tests compile the same small programs, and each is compiled once per run instead of once
per test and worker. `AUTOREC_TEST_COMPILATION_CACHE=off` turns it off.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _run_cache_dir() -> Path | None:
    if os.environ.get("AUTOREC_TEST_COMPILATION_CACHE", "on") == "off":
        return None
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or os.environ.setdefault(
        "AUTOREC_TEST_RUN_ID", f"{os.getpid()}")
    return Path(tempfile.gettempdir()) / f"autorec_jax_test_cache_{run_id}"


_CACHE = _run_cache_dir()
if _CACHE is not None:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    os.environ["AUTOREC_JAX_JIT_CACHE"] = str(_CACHE)   # the scripts' default folder

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_sessionfinish(session):
    # The controller (not an xdist worker) removes the run's cache once every worker is done.
    if _CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)


# The costliest tests (>= ~6 s each on a 2-core CPU, `pytest --durations`) whose code paths
# cheaper tests also run: the loop, the scripts and the policies (Python-level logic), and
# end-to-end repeats of equivalences that a cheaper test checks too. They run in the README's
# command; CI's second Python (3.13, `.ci/run`) skips them (`-m "not slow"`), to stay inside
# CI's time limit, and still runs pmap and sharded against jit (test_train's 8-device
# cases, test_sharded, test_compose, test_ranking, test_networks, test_multi's other cases).
SLOW_TESTS = frozenset({
    "test_stages_equal_their_composition_by_hand",
    "test_an_interrupted_stage_resumes_and_no_stage_restarts",
    "test_glocal_as_an_ensemble_member_scores_as_its_own_run",
    "test_whole_runs_with_pmap_and_jit_agree",
    "test_optimizer_swap_trains_with_lions_and_adamws_state",
    "test_each_member_equals_the_same_model_trained_alone",
    "test_restored_params_score_under_pmap",
    "test_clip_and_noise_bounds_every_step_and_noise_is_shared_across_devices",
    "test_entry_fields_reach_the_epoch_batches_in_csr_order",
    "test_train_epoch_equals_its_steps_one_by_one",
    "test_hidden_l1_lowers_the_activations_and_agrees_across_devices",
    "test_encoder_decoder_lr_zero_decoder_lr_freezes_the_output_layer_only",
    "test_per_row_grad_norms_reports_numpy_norms_that_add_up_to_the_batch_gradient",
    "test_own_loop_agrees_across_devices_and_scores_like_a_numpy_forward_pass",
    "test_deep_stack_and_every_activation_build",
    "test_lbfgs_example_equals_the_configs_lbfgs",
    "test_cli_exits_2_when_jax_fell_back_to_the_cpu_beside_a_tpu",
    "test_ctrl_c_during_training_stops_after_the_epoch_and_saves_it",
    "test_ensemble_script_end_to_end",
    "test_main_ends_with_the_test_rmse_line",
    "test_layer_norms_prints_the_historys_per_layer_grad_norms",
    "test_progress_bar_shows_loss_rmse_and_rate_instead_of_epoch_lines",
    "test_protocol_and_compare_scripts_end_to_end",
    "test_sweep_cli_bad_input_exits_2_with_one_line",
    "test_train_cli_refuses_a_used_folder_and_an_out_file_before_loading",
    "test_train_cli_success_path",
    "test_random_files_parse_correctly_or_raise_data_error",
    "test_interrupted_and_resumed_run_equals_the_uninterrupted_one",
    "test_resume_with_another_config_or_a_damaged_checkpoint_is_refused",
    "test_noisy_test_targets_leave_every_selection_unchanged",
    "test_select_best_keeps_the_best_validation_epoch_of_the_whole_run",
    "test_retrain_trains_on_train_plus_validation_for_the_selected_epochs",
    "test_rows_equal_single_runs_of_the_same_config",
    "test_seeds_and_float_settings_train_together_and_equal_runs_one_at_a_time",
    "test_run_protocol_rows_equal_separate_runs",
    "test_members_on_other_splits_and_a_run_folder_each",
    "test_members_share_one_split_and_report_their_runs_scores",
    "test_preset_runs_state_their_protocol",
    "test_a_run_without_selection_reports_the_final_ranking",
    "test_train_cli_refuses_a_model_too_big_for_memory_in_one_line",
    "test_train_and_evaluate_writes_metrics_and_summary",
    "test_metrics_jsonl_has_per_layer_norms_every_epoch",
    "test_train_cli_with_an_empty_test_split_exits_1_with_one_line",
})


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
