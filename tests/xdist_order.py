"""The order the tests run in: the longest first, dealt out to the shares that pytest-xdist's
worksteal hands its workers at the start, so that no worker ends the suite on a study alone."""

from __future__ import annotations

import os

import pytest

# Seconds the slowest tests take (setup and call; a 2-core run's --durations, which .ci/run
# prints: main at 341812c, under load). Only their order matters: refresh an entry when a test's
# rank changes much. Keyed by file and function; a parametrized test's slowest variant.
EXPECTED_S: dict[str, float] = {
    "test_api.py::test_a_study_given_as_a_dict_searched_then_replayed": 36,
    "test_best_report.py::test_search_warm_started_from_an_earlier_study": 34,
    "test_best_report.py::test_a_diverged_or_failed_trial_is_never_the_best": 22,
    "test_browser.py::test_study_page_names_the_winner_and_lists_each_trial": 35,
    "test_curve_table.py::test_replayed_study_reports_the_tables_curves": 41,
    "test_extension.py::test_a_finished_study_extended_runs_the_samples_it_lacks": 60,
    "test_flat_stop.py::test_a_flat_study_stops_early_records_why_and_seed_checks_its_best": 36,
    "test_gpu_study.py::test_the_gpu_benchmark_runs_its_baseline_and_study_and_measures_them": 83,
    "test_memory_kills.py::test_memory_monitor_kills_are_retried_then_recorded": 25,
    "test_notebook.py::test_the_quickstart_notebook_runs_in_a_real_kernel": 59,
    "test_preemption.py::"
    "test_a_stop_checkpoints_each_trial_where_it_is_and_resume_goes_on_from_there": 60,
    "test_redact.py::test_no_command_prints_a_password": 20,
    "test_registry.py::test_registered_on_an_mlflow_server_backed_by_postgres": 25,
    "test_replay.py::test_replay_of_a_real_search_is_bit_exact": 27,
    "test_scale.py::test_scale_on_real_studies": 62,
    "test_search_algorithms.py::test_pbt_study_perturbs_within_the_space": 34,
    "test_search_algorithms.py::test_hyperband_study": 33,
    "test_search_algorithms.py::test_an_unfinished_hyperband_study_is_not_resumed": 28,
    "test_search_faults.py::test_one_ctrl_c_under_uv_run_is_one_stop_with_its_grace": 137,
    "test_search_inputs.py::test_trial_larger_than_every_cluster_node_is_a_warning": 22,
    "test_search_recovery.py::test_os_kill_retries_and_driver_sigkill_resumes": 96,
    "test_search_recovery.py::test_pbt_study_killed_and_resumed_logs_no_evaluation_twice": 64,
    "test_search_recovery.py::test_a_trial_stopped_just_before_the_kill_is_stopped_again": 60,
    "test_search_recovery.py::"
    "test_median_rule_stops_trials_and_keeps_its_state_across_a_resume": 52,
    "test_search_recovery.py::test_a_trial_the_os_kills_past_its_retries_fails_unscored": 35,
    "test_search_recovery.py::test_a_second_driver_of_a_running_study_is_refused": 26,
    "test_search_sim.py::test_simulator_agrees_with_the_replayed_study": 55,
    "test_search_stopping.py::test_every_stop_ends_the_study_at_once_and_resumes": 57,
    "test_search_stopping.py::test_sigterm_stops_the_study_as_ctrl_c_does": 50,
    "test_search_stopping.py::test_a_stop_at_any_moment_of_the_start_up_stops_the_study": 41,
    "test_search_stopping.py::test_stop_before_the_first_trial_then_resume": 40,
    "test_search_study.py::test_study_of_one_trial_at_a_time_repeats_exactly": 52,
    "test_search_study.py::test_study_where_no_trial_trains_exits_1": 44,
    "test_search_study.py::test_trials_that_tie_name_the_earliest_as_best": 31,
    "test_search_study.py::test_study_records_parent_and_children": 27,
    "test_search_study.py::test_resuming_a_finished_study_reruns_nothing": 23,
    "test_search_study.py::test_metrics_samples_and_checkpoints": 23,
    "test_search_tracking.py::test_tracking_server_lost_mid_study_stops_it": 60,
    "test_search_tracking.py::test_study_on_mlflow_server_and_ray_cluster": 46,
    "test_search_tracking.py::test_tracking_failure_as_a_trial_ends_stops_the_study": 43,
    "test_search_tracking.py::test_a_stop_while_a_new_store_is_made_leaves_it_whole_or_absent": 35,
    "test_search_tracking.py::test_unreachable_tracking_store_fails_before_training": 30,
    "test_storage_faults.py::test_a_full_disk_stops_the_study_and_resume_finishes_it": 69,
    "test_train.py::test_eval_tokens_evaluates_every_batch_size_at_equal_token_counts": 23,
    "test_transfer.py::test_a_transfer_study_records_a_run_per_sample_and_size": 53,
    "test_transfer.py::test_a_transfer_study_stopped_mid_sample_resumes_its_other_sizes": 46,
    "test_two_nodes.py::"
    "test_a_study_runs_on_the_worker_node_stops_with_notice_and_resumes_there": 67,
    "test_ui.py::test_ui_serves_the_study_until_ctrl_c": 26,
    "test_ui.py::test_ui_on_another_address_lists_each_study_and_stops_on_sigterm": 21,
    "test_wsd_forks.py::"
    "test_a_study_records_its_forks_and_tuner_scale_fits_through_their_budgets": 46,
}
SLOW_S = 20.0  # a test marked slow that the table does not list
QUICK_S = 0.0  # any other


def expected_s(item: pytest.Item) -> float:
    """What `item` is expected to take, from the table or its slow mark."""
    listed = EXPECTED_S.get(f"{item.path.name}::{getattr(item, 'originalname', item.name)}")
    if listed is not None:
        return listed
    return SLOW_S if item.get_closest_marker("slow") else QUICK_S


def _unit(item: pytest.Item) -> str:
    """Tests that share a fixture their module builds once (a study to read) go to one worker,
    which builds it once; any other test is a unit of its own."""
    module = item.nodeid.split("::")[0]
    info = getattr(item, "_fixtureinfo", None)  # a test function's fixtures (pytest's own)
    for fixtures in info.name2fixturedefs.values() if info else ():
        if fixtures[-1].scope in ("module", "session") and fixtures[-1].baseid == module:
            return module
    return item.nodeid


def _share_sizes(count: int, workers: int) -> list[int]:
    """How many of `count` tests worksteal first sends each of `workers` (in a row: the first
    share to the first worker)."""
    sizes = []
    for i in range(workers):
        sizes.append(count // (workers - i))
        count -= sizes[-1]
    return sizes


def deal(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """`items` in the order to collect them: each unit of tests, longest first, into the share
    with the least expected time; then the quick ones, in their order, to fill each share. A
    worker out of tests steals from the end of another's share: quick tests, not a study."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit(item), []).append(item)
    seconds = {key: sum(map(expected_s, group)) for key, group in units.items()}
    sizes = _share_sizes(len(items), workers)
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    quick = []
    for key in sorted(units, key=lambda key: -seconds[key]):  # stable: quick ones in order
        group = units[key]
        if seconds[key] == QUICK_S:
            quick.extend(group)
            continue
        room = [i for i in range(workers) if len(shares[i]) + len(group) <= sizes[i]]
        share = min(room or range(workers), key=lambda i: loads[i] if room else -sizes[i])
        shares[share].extend(group)
        loads[share] += seconds[key]
    for share, size in zip(shares, sizes):
        room = max(0, size - len(share))
        share.extend(quick[:room])
        del quick[:room]
    return [item for share in shares for item in share] + quick


def workers() -> int:
    """The number of xdist workers of this run (set in each worker's environment), else 1."""
    return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
