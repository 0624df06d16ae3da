"""spo/MathVerify-v0: single-turn math problems graded by symbolic equivalence."""

from __future__ import annotations

from pathlib import Path

from spo_agents.env import Task, ToolEnv, load_tasks, split_tasks, strip_tool_calls
from spo_agents.grading import shared_math_grader

from spo_env_mathverify.problems import bundled_problems

SYSTEM_PROMPT = "Solve the math problem. Reason step by step, then put the final answer in \\boxed{}."


def gsm8k_answer(answer: str) -> str:
    """GSM8K references end with '#### 42'; keep what follows the marker."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "") if "####" in answer else answer


def math_reward(final_reply: str, task: Task) -> float:
    """1.0 if the last boxed answer outside tool calls is equivalent to the reference."""
    return shared_math_grader().grade(strip_tool_calls(final_reply), task.answer)


def user_tasks(dataset_path: str | Path, prompt_field: str, answer_field: str, id_field: str | None,
               answer_format: str) -> list[Task]:
    if answer_format not in ("plain", "gsm8k"):
        raise ValueError(f"answer_format must be 'plain' or 'gsm8k', got {answer_format!r}")
    tasks = load_tasks(dataset_path, prompt_field, answer_field, id_field)
    if answer_format == "gsm8k":
        tasks = [t.model_copy(update={"answer": gsm8k_answer(t.answer)}) for t in tasks]
    return tasks


class MathVerifyEnv(ToolEnv):
    """Single-turn math problems graded by symbolic equivalence of the last boxed answer.

    ## Description
    A math problem is posed; the assistant answers in one reply. The bundled set holds a few
    hundred generated problems (fractions, equations, roots, gcd/lcm, radicals, series,
    probability, circles) with exact answers; user datasets (GSM8K / DAPO-Math style JSONL or
    Parquet) load with `dataset_path`.

    ## Action
    The assistant's reply, with the final answer in `\\boxed{}`.

    ## Observation
    The problem statement at reset; an empty string after the reply.

    ## Tools
    None.

    ## Rewards
    1.0 if the last `\\boxed{}` of the reply (outside tool-call blocks) is equivalent to the
    reference (math-verify in a killable worker process; a dependency-free normalising grader
    when math-verify is not installed), else 0.0. Pathological answers score 0.0 within the
    grader's timeout.

    ## Episode end
    Always after one step: `terminated=True, truncated=False`.

    ## Arguments
    `num_problems` (bundled set size, default 400), `seed` (default 0), `heldout_fraction`
    (default 0.2), `split`, `dataset_path`, `prompt_field` ("question"), `answer_field`
    ("answer"), `id_field` ("id"), `answer_format` ("plain" or "gsm8k").

    ## Version history
    - v0: initial release.
    """

    def __init__(self, num_problems: int = 400, seed: int = 0, heldout_fraction: float = 0.2, split: str = "train",
                 dataset_path: str | None = None, prompt_field: str = "question", answer_field: str = "answer",
                 id_field: str | None = "id", answer_format: str = "plain", **kwargs):
        if dataset_path is None:
            tasks = bundled_problems(num_problems, seed)
        else:
            tasks = user_tasks(dataset_path, prompt_field, answer_field, id_field, answer_format)
        super().__init__(
            split_tasks(tasks, heldout_fraction),
            tools=(),
            grader=math_reward,
            split=split,
            system_prompt=kwargs.pop("system_prompt", SYSTEM_PROMPT),
            max_turns=1,
            **kwargs,
        )

    def oracle_action(self) -> str:
        """The reference answer, boxed (a scripted policy for demos and tests)."""
        return f"The answer is \\boxed{{{self.task.answer}}}."
