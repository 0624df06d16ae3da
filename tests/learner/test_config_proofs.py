"""Every setting a user can write in a training config must do something or be rejected.

`PROOFS` maps each leaf field of `TrainConfig` (walked recursively through its sections,
`spo_agents/trainer/config.py` and the learner configs it holds) to the tests that prove it:
`changes(...)` names tests in which changing the setting changes what the run does (a parameter
moves differently, a hand-computed advantage, a different engine, a rejected combination...);
`rejects(...)` names the test of the validation that refuses it. The tests below fail, with a
message saying what to add, when a field has no entry, when an entry names no field, or when a
named test does not exist or never mentions the setting.

Adding a setting? Add one line to PROOFS, in its section, pointing at the test that shows it
working, e.g.  "optim.warmup_steps": changes(f"{UPDATE}::test_warmup_raises_the_lr_step_by_step").
This file reads tests as text (ast); it runs none of them and loads no model.
"""

from __future__ import annotations

import ast
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pydantic

from spo_agents.trainer.config import TrainConfig

TESTS = Path(__file__).resolve().parents[1]
REGISTRY = "tests/learner/test_config_proofs.py"


@dataclass(frozen=True)
class Proof:
    kind: str  # "changes" or "rejects"
    tests: tuple[str, ...]  # "tests/<path>.py::test_name"


def changes(*tests: str) -> Proof:
    """Tests in which changing the setting changes behaviour."""
    return Proof("changes", tests)


def rejects(*tests: str) -> Proof:
    """Tests of the validation that rejects the setting (it would do nothing)."""
    return Proof("rejects", tests)


SETTINGS = "tests/trainer/test_config_settings.py"
BUILD = f"{SETTINGS}::test_trainer_builds_every_part_from_its_settings"
RUN = f"{SETTINGS}::test_run_level_settings_shape_the_run"
REJECTED = f"{SETTINGS}::test_settings_no_code_would_read_are_rejected"
ROLLOUT = f"{SETTINGS}::test_rollout_settings_reach_the_engine_and_the_backend"
WARM = f"{SETTINGS}::test_warm_start_settings_shape_the_warm_start"
LORA = f"{SETTINGS}::test_lora_settings_shape_the_adapters"
ENGINE = "tests/rollout/test_engine.py"
UPDATE = "tests/learner/test_learner_update.py"
ALGORITHMS = "tests/learner/test_learner_algorithms.py"
DRIFT = "tests/learner/test_learner_drift.py"
TRACKER = "tests/learner/test_learner_tracker.py"
SAMPLER = "tests/learner/test_learner_sampler.py"
RUN_SETUP = "tests/trainer/test_run_setup.py"
SERVE_TRAIN = "tests/backends/test_http_backend.py::test_the_trainer_generates_on_spo_serve_and_pushes_each_step"
SERVER_CONFIG = ("tests/backends/test_server_weights.py::test_config_selects_the_server_and_rejects_settings_that_"
                 "would_do_nothing")

PROOFS: dict[str, Proof] = {
    # ---- top level ------------------------------------------------------------------------
    "algo": changes(BUILD),
    "model": changes("tests/trainer/test_sft.py::test_sft_lowers_the_demonstration_loss_and_the_trainer_starts_"
                     "from_its_weights"),
    "device": changes(f"{SETTINGS}::test_cuda_device_trains_on_the_gpu", REJECTED),
    "generation": changes(f"{SETTINGS}::test_generation_and_generation_url_choose_the_backend",
                          "tests/distributed/test_ray_trainer.py::test_spo_training_with_ray_env_actors_and_"
                          "generation_replicas"),
    "generation_workers": changes("tests/distributed/test_ray_trainer.py::test_spo_training_with_ray_env_actors_"
                                  "and_generation_replicas", REJECTED),
    "generation_url": changes(f"{SETTINGS}::test_generation_and_generation_url_choose_the_backend", SERVE_TRAIN,
                              REJECTED),
    "generation_api_key": changes(SERVE_TRAIN),  # the server refuses pushes without it
    "generation_server": changes(SERVER_CONFIG, "tests/backends/test_server_weights.py::test_the_trainer_pushes_every_"
                                 "step_through_the_vllm_sequence"),
    "generation_weights_dir": changes(SERVER_CONFIG, SERVE_TRAIN),
    "learner_parallel": changes("tests/distributed/test_fsdp_learner.py::test_spo_agents_train_with_the_sharded_"
                                "learner_checkpoints_and_resumes", "tests/distributed/test_fsdp_learner.py::test_the_"
                                "sharded_learner_is_selected_by_config_and_refuses_what_it_cannot_do"),
    "env_id": changes("tests/trainer/test_trainer_streaming.py::test_spo_learner_steps_while_slow_episodes_run"),
    "env_kwargs": changes(BUILD),
    "steps": changes(RUN),
    "batch_size": changes(RUN, BUILD),
    "group_size": changes(BUILD, f"{ENGINE}::test_group_mode_delivers_whole_groups"),
    "grpo_mode": changes(BUILD),
    "spo_update": changes(f"{ALGORITHMS}::test_drift_audit_logs_the_reference_estimator_on_the_same_visits",
                          f"{ALGORITHMS}::test_running_moments_survive_a_checkpoint"),
    "max_staleness": changes("tests/trainer/test_trainer_streaming.py::test_staleness_drop_and_downweight"),
    "staleness_policy": changes("tests/trainer/test_trainer_streaming.py::test_staleness_drop_and_downweight"),
    "staleness_decay": changes("tests/trainer/test_trainer_streaming.py::test_staleness_drop_and_downweight"),
    "value_table": changes(BUILD),
    "train_tasks": changes(f"{SETTINGS}::test_train_tasks_fixes_the_pool_that_training_and_estimate_values_revisit"),
    "output_dir": changes(RUN),
    "checkpoint_every": changes(RUN),
    "transcripts": changes(RUN),
    "seed": changes(BUILD),
    # ---- lora -----------------------------------------------------------------------------
    "lora.r": changes(LORA, "tests/trainer/test_trainer_smoke.py::test_lora_training_pushes_merged_weights"),
    "lora.alpha": changes(LORA),
    "lora.dropout": changes(LORA),
    "lora.target_modules": changes(LORA),
    # ---- warm_start (the `spo-agents sft` settings) ---------------------------------------
    "warm_start.model": changes(WARM),
    "warm_start.tiny_hidden_size": changes(WARM),
    "warm_start.tiny_layers": changes(WARM),
    "warm_start.tiny_digit_tokens": changes(WARM),
    "warm_start.tiny_tokenizer_env_episodes": changes(
        "tests/trainer/test_sft.py::test_env_text_corpus_makes_the_env_words_whole_tokens"),
    "warm_start.chat_template": changes(WARM),
    "warm_start.env_id": changes(WARM),
    "warm_start.env_kwargs": changes(WARM),
    "warm_start.num_demos": changes(WARM),
    "warm_start.direct_answers.fraction": changes(
        "tests/trainer/test_sft.py::test_direct_answer_demonstrations_reply_at_once_on_the_matching_tasks_only"),
    "warm_start.direct_answers.where": changes(
        "tests/trainer/test_sft.py::test_direct_answer_demonstrations_reply_at_once_on_the_matching_tasks_only"),
    "warm_start.direct_answers.scope": changes(
        "tests/trainer/test_sft.py::test_call_scope_skips_the_matching_tool_calls_of_a_multi_turn_task"),
    "warm_start.direct_answers.pattern": changes(
        "tests/trainer/test_sft.py::test_call_scope_skips_the_matching_tool_calls_of_a_multi_turn_task"),
    "warm_start.steps": changes(WARM),
    "warm_start.batch_size": changes(WARM),
    "warm_start.lr": changes(WARM),
    "warm_start.weight_decay": changes(WARM),
    "warm_start.grad_clip": changes(WARM),
    "warm_start.microbatch_tokens": changes(WARM),
    "warm_start.device": changes(WARM, REJECTED),
    "warm_start.seed": changes(WARM),
    "warm_start.output_dir": rejects(REJECTED),
    # ---- rollout --------------------------------------------------------------------------
    "rollout.num_slots": changes(BUILD, f"{ENGINE}::test_slow_environment_does_not_block_other_slots"),
    "rollout.mode": rejects(REJECTED),
    "rollout.group_size": rejects(REJECTED),
    "rollout.max_tokens_per_turn": changes(BUILD, f"{ENGINE}::test_episode_timeout_and_token_budget_truncate"),
    "rollout.max_tokens_per_episode": changes(BUILD, f"{ENGINE}::test_episode_timeout_and_token_budget_truncate"),
    "rollout.max_context_tokens": changes(BUILD, ROLLOUT),
    "rollout.episode_timeout_s": changes(BUILD, f"{ENGINE}::test_episode_timeout_and_token_budget_truncate"),
    "rollout.env_step_timeout_s": changes(BUILD, f"{ENGINE}::test_failing_environments_end_one_episode_each"),
    "rollout.env_executor": changes(BUILD, f"{ENGINE}::test_failing_environments_end_one_episode_each"),
    "rollout.env_workers": changes(BUILD, ROLLOUT),
    "rollout.temperature": changes(BUILD, ROLLOUT),
    "rollout.top_p": changes(BUILD, ROLLOUT),
    "rollout.top_k": changes(BUILD, ROLLOUT),
    "rollout.max_pending_episodes": changes(BUILD, f"{ENGINE}::test_thousand_concurrent_episodes_bounded_and_"
                                            "accounted"),
    "rollout.max_unconsumed": changes(BUILD, f"{ENGINE}::test_admission_bound_pauses_new_episodes_until_"
                                      "acknowledged"),
    "rollout.seed": changes(BUILD, ROLLOUT),
    # ---- tracker --------------------------------------------------------------------------
    "tracker.rho_mode": changes(f"{DRIFT}::test_forgetting_factor_modes"),
    "tracker.d_half": changes(f"{DRIFT}::test_d_half_and_the_clip_come_from_the_tracker_config"),
    "tracker.rho_min": changes(f"{DRIFT}::test_d_half_and_the_clip_come_from_the_tracker_config", BUILD),
    "tracker.rho_max": changes(f"{DRIFT}::test_d_half_and_the_clip_come_from_the_tracker_config"),
    "tracker.constant_rho": changes(f"{DRIFT}::test_forgetting_factor_modes"),
    "tracker.drift_estimator": changes(
        f"{ALGORITHMS}::test_stored_episode_reads_revisits_off_the_training_forward",
        f"{ALGORITHMS}::test_behaviour_ratio_makes_no_pass_and_compares_sampler_with_training_forward",
        f"{ALGORITHMS}::test_stored_episode_rescore_keeps_the_reference_timing"),
    "tracker.drift_audit": changes(f"{ALGORITHMS}::test_drift_audit_logs_the_reference_estimator_on_the_same_visits",
                                   f"{ALGORITHMS}::test_drift_audit_against_itself_is_rejected"),
    "tracker.drift_cache_max_tasks": changes(BUILD, f"{DRIFT}::test_lru_eviction_by_task_count_and_total_tokens"),
    "tracker.drift_cache_max_tokens_per_episode": changes(BUILD, f"{DRIFT}::test_long_episodes_are_truncated_to_"
                                                          "an_exact_prefix"),
    "tracker.drift_cache_max_total_tokens": changes(BUILD, f"{DRIFT}::test_lru_eviction_by_task_count_and_total_"
                                                    "tokens"),
    "tracker.init_smoothed": changes(BUILD, f"{TRACKER}::test_unsmoothed_init_of_tasks_never_or_always_solved"),
    "tracker.prior_alpha": changes(BUILD),
    "tracker.prior_beta": changes(BUILD),
    # ---- sampler --------------------------------------------------------------------------
    "sampler.prioritized": changes(f"{SAMPLER}::test_unprioritized_sampler_weighs_every_task_the_same"),
    "sampler.eps": changes(BUILD, f"{SAMPLER}::test_weights_match_hand_computation"),
    "sampler.gamma": changes(BUILD, f"{SAMPLER}::test_gamma_divides_by_n_eff"),
    "sampler.max_in_flight_per_task": changes(BUILD, f"{SAMPLER}::test_limit_two_allows_two_copies"),
    "sampler.seed": changes(BUILD),
    # ---- advantage ------------------------------------------------------------------------
    "advantage.normalize": changes(f"{ALGORITHMS}::test_collect_mode_batch_uses_the_advantage_settings",
                                   f"{ALGORITHMS}::test_accumulate_mode_uses_the_configured_running_statistics"),
    "advantage.spo_eps": changes(f"{ALGORITHMS}::test_collect_mode_batch_uses_the_advantage_settings",
                                 f"{ALGORITHMS}::test_accumulate_mode_uses_the_configured_running_statistics"),
    "advantage.ddof": changes(f"{ALGORITHMS}::test_collect_mode_batch_uses_the_advantage_settings",
                              f"{ALGORITHMS}::test_accumulate_mode_uses_the_configured_running_statistics"),
    "advantage.grpo_scale_by_std": changes(f"{ALGORITHMS}::test_grpo_uses_scale_by_std_and_eps"),
    "advantage.grpo_eps": changes(f"{ALGORITHMS}::test_grpo_uses_scale_by_std_and_eps"),
    "advantage.running_moments": changes(f"{ALGORITHMS}::test_accumulate_mode_uses_the_configured_running_statistics",
                                         BUILD),
    "advantage.ema_decay": changes(f"{ALGORITHMS}::test_accumulate_mode_uses_the_configured_running_statistics"),
    # ---- loss -----------------------------------------------------------------------------
    "loss.clip_low": changes(f"{UPDATE}::test_clip_settings_decide_which_tokens_carry_gradient"),
    "loss.clip_high": changes(f"{UPDATE}::test_clip_settings_decide_which_tokens_carry_gradient"),
    "loss.dual_clip": changes(f"{UPDATE}::test_clip_settings_decide_which_tokens_carry_gradient"),
    "loss.tis_cap": changes(f"{UPDATE}::test_tis_cap_replaces_the_clip_by_a_truncated_weight",
                            f"{UPDATE}::test_tis_cap_rejects_clip_settings_it_would_ignore"),
    "loss.kl_coef": changes(f"{UPDATE}::test_kl_coef_pulls_the_policy_back_to_the_reference", BUILD),
    "loss.entropy_coef": changes(f"{UPDATE}::test_entropy_coef_raises_the_policy_entropy"),
    # ---- optim ----------------------------------------------------------------------------
    "optim.lr": changes(BUILD, f"{UPDATE}::test_step_raises_positive_and_lowers_negative_advantage_episodes"),
    "optim.weight_decay": changes(BUILD),
    "optim.betas": changes(BUILD),
    "optim.grad_clip": changes(f"{UPDATE}::test_grad_clip_bounds_the_gradient_the_optimiser_sees"),
    "optim.microbatch_tokens": changes(BUILD, f"{UPDATE}::test_accumulating_one_episode_at_a_time_equals_one_"
                                       "batch_step", f"{UPDATE}::test_microbatches_respect_token_budget"),
    "optim.share_prefix": changes("tests/learner/test_shared_prefix.py::test_shared_prefix_forward_equals_the_plain_"
                                  "forward"),
    "optim.temperature": changes(f"{UPDATE}::test_optim_temperature_scales_the_logits_of_every_log_prob", BUILD),
    "optim.schedule": changes(f"{RUN_SETUP}::test_lr_schedules", f"{RUN_SETUP}::test_env_from_a_file_path_trains_"
                              "with_a_decaying_lr"),
    "optim.warmup_steps": changes(f"{RUN_SETUP}::test_lr_schedules"),
    "optim.decay_steps": changes(f"{RUN_SETUP}::test_lr_schedules"),
    "optim.min_lr_ratio": changes(f"{RUN_SETUP}::test_lr_schedules"),
    # ---- threads --------------------------------------------------------------------------
    "threads.learner": changes("tests/trainer/test_threads.py::test_trainer_budgets_are_in_force_and_reported"),
    "threads.decoder": changes("tests/trainer/test_threads.py::test_trainer_budgets_are_in_force_and_reported"),
    "threads.sharing": changes("tests/trainer/test_threads.py::test_learner_runs_where_the_sharing_says"),
    # ---- eval -----------------------------------------------------------------------------
    "eval.every_steps": changes(RUN),
    "eval.num_tasks": changes(RUN, BUILD),
    "eval.temperature": changes(BUILD),
    "eval.split": changes(BUILD),
    "eval.enabled": changes(BUILD),
}


def _models_in(annotation: object) -> list[type[pydantic.BaseModel]]:
    """The pydantic sections an annotation holds (X, X | None, Optional[X], ...)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def leaf_settings(model: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every field that is not itself a section, depth first."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        sections = _models_in(field.annotation)
        if not sections:
            paths.append(prefix + name)
        for section in sections:
            paths += leaf_settings(section, f"{prefix}{name}.")
    return paths


@lru_cache(maxsize=None)
def _test_sources(path: str) -> dict[str, str]:
    """Source text (decorators included) of each test function in a file, keyed 'name' and
    'Class::name'."""
    text = (TESTS.parent / path).read_text(encoding="utf-8")
    sources: dict[str, str] = {}
    for node in ast.parse(text).body:
        functions = [(node.name, node)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if isinstance(node, ast.ClassDef):
            functions = [(f"{node.name}::{f.name}", f) for f in node.body
                         if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for key, function in functions:
            first = min([function.lineno] + [d.lineno for d in function.decorator_list])
            sources[key] = "\n".join(text.splitlines()[first - 1: function.end_lineno])
    return sources


def _entry_example(path: str) -> str:
    return f'    "{path}": changes("tests/<area>/test_<module>.py::test_<what_it_shows>"),'


def test_every_training_setting_has_a_proof():
    missing = [path for path in leaf_settings(TrainConfig) if path not in PROOFS]
    assert not missing, (
        f"TrainConfig settings without a proof: {', '.join(missing)}.\n"
        f"Every setting must do something or be rejected. For each, add an entry to PROOFS in {REGISTRY}:\n"
        + "\n".join(_entry_example(path) for path in missing)
        + "\nnaming a test in which changing the setting changes what the run does; or, if the setting "
        "would do nothing, reject it in the config's validation and register rejects(<the test of that "
        "rejection>).")


def test_every_proof_entry_names_a_setting():
    settings = set(leaf_settings(TrainConfig))
    stale = sorted(set(PROOFS) - settings)
    assert not stale, f"PROOFS in {REGISTRY} has entries for settings TrainConfig no longer has: {stale}; remove them"


def test_every_proof_names_an_existing_test_that_mentions_the_setting():
    problems = []
    for path, proof in PROOFS.items():
        assert proof.kind in ("changes", "rejects") and proof.tests, path
        leaf = path.rsplit(".", 1)[-1]
        mentioned = False
        for reference in proof.tests:
            file, _, name = reference.partition("::")
            if not (TESTS.parent / file).is_file() or name not in _test_sources(file):
                problems.append(f"{path}: {reference} does not exist")
                continue
            mentioned |= re.search(rf"\b{re.escape(leaf)}\b", _test_sources(file)[name]) is not None
        if not mentioned:
            problems.append(f"{path}: none of {list(proof.tests)} mentions {leaf!r}")
    assert not problems, f"fix these entries of PROOFS in {REGISTRY}:\n" + "\n".join(problems)
