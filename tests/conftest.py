"""Test-suite set-up.

``python -m pytest`` from the repository root puts the root first on ``sys.path``, where
``profile.py`` would shadow the standard library's ``profile`` (imported by cProfile and
torch._dynamo). Importing the package first moves the root behind the standard library.
"""
import os

# Tests use tiny tensors: one thread avoids OpenMP start-up and spin costs that grow sharply when the
# two cores are shared, and subprocesses (CLI tests, torchrun workers) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import trajectory  # noqa: E402,F401  (must precede any torch import)

os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_configure(config):
    from _perturb import install, requested  # tests/ is on sys.path (rootdir-relative conftest)
    kinds = requested()
    if kinds:
        install(kinds)
        config.issue_config_time_warning(
            UserWarning(f"perturbation on: {kinds} (a robustness sweep, not a normal run)"), 2)


# What `make test-fast` leaves out (`-m "not slow"`; `make test` runs everything): simulator
# rollouts, DDP, training to a loss, and subprocess runs of the CLIs. Whole modules, or some of
# their tests by name.
SLOW = {
    "test_end_to_end.py": "all", "test_readme_commands.py": "all", "test_benchmark_scripts.py": "all",
    "test_faults_files.py": "all", "test_faults_runs.py": "all",
    "test_faults_outputs.py": "all",
    "test_advantage_weights.py": ("test_train_py_weights_a_run_by_the_critic_of_another_run_of_the_same_data",
                                  "test_weighting_without_a_critic_is_refused"),
    "test_profiling.py": "all", "test_cli.py": "all", "test_sac.py": "all",
    "test_data_generate.py": "all", "test_lm_cli.py": "all", "test_vit_moe_train.py": "all",
    "test_training.py": ("test_ddp_two_processes_equal_one_process_on_the_concatenated_batch",
                         "test_loss_falls_on_a_learnable_pattern"),
    "test_critic.py": ("test_train_critic_resumes_exactly_and_eval_plans_with_it",),
    "test_quantize.py": ("test_no_deprecation_warnings_reach_users",
                         "test_deprecation_filters_stay_inside_the_package_calls",
                         "test_eval_reuses_the_saved_int8_model_only_when_it_matches_the_weights",
                 "test_compiled_int8_steps_agree_with_fp32"),
    "test_cores_contract.py": ("test_copy_task_loss_falls",),
    "test_trajectory_model.py": ("test_compiled_token_step_follows_shared_prefix_states",
                                 "test_compiled_token_step_matches_the_eager_step_and_leaves_chunks_eager"),
    "test_planner.py": ("test_rollout_actions_stay_in_the_action_space",
                        "test_render_records_an_animation_of_the_first_episode",
                        "test_eval_takes_the_env_from_the_checkpoint_and_refuses_another",
                        "test_non_finite_observations_stop_the_evaluation_with_the_episode_and_step",
                        "test_the_agent_acts_as_the_rollout_does",
                        "test_envs_that_terminate_at_different_steps_leave_the_batch"),
}


def pytest_collection_modifyitems(config, items):
    import pytest
    for item in items:
        slow = SLOW.get(item.path.name)
        if slow == "all" or (slow and item.originalname in slow):
            item.add_marker(pytest.mark.slow)
