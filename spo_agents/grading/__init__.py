"""Answer extraction and grading for math-style rewards.

- `extract_boxed`, `extract_last_boxes`, `strip_tool_calls`, `strip_code_blocks`,
  `answer_region` (boxed.py): find the final answer of a reply.
- `normalize_answer`, `fallback_equal` (normalize.py): dependency-free comparison.
- `MathGrader`, `shared_math_grader`, `reference_parts` (math_grader.py): math-verify in
  killable worker processes, with the fallback as fast path and as stand-in when math-verify
  is missing; a reference with several boxes needs every part.
"""

from spo_agents.grading.boxed import (
    answer_region,
    extract_boxed,
    extract_last_boxes,
    strip_code_blocks,
    strip_tool_calls,
)
from spo_agents.grading.math_grader import MathGrader, math_verify_available, reference_parts, shared_math_grader
from spo_agents.grading.normalize import fallback_equal, normalize_answer

__all__ = [
    "MathGrader",
    "answer_region",
    "extract_boxed",
    "extract_last_boxes",
    "fallback_equal",
    "math_verify_available",
    "normalize_answer",
    "reference_parts",
    "shared_math_grader",
    "strip_code_blocks",
    "strip_tool_calls",
]
