"""Find the final answer in a model reply: the last `\\boxed{...}` outside tool and code blocks.

Why: the reward of the built-in environments grades only the last boxed answer of the final
reply. A policy under RL will try to score with boxes that are not its answer: boxes inside a
`<tool_call>` it wrote, inside a `<tool_response>` it copied, or inside a fenced code block.
These helpers drop such regions and then pick the last box.

Why not math-verify's extractor: it runs regular expressions over the whole reply inside
the (killable) worker, knows nothing of tool blocks, and is not installed in every setup.
Every function here does work linear in the input, with the scanning done by C-level
`str.find`/`str.count`/`str.replace`; no regular expression with backtracking sees model
text. Measured on 8 MB replies: about 10-60 ms, and 220 ms for 330,000 tool-call blocks.

Left out on purpose:
- `\\boxed` inside another box: the innermost last one is returned (as in Hendrycks' MATH
  `last_boxed_only_string`); models do not nest boxes in honest answers.
- If the last box is unclosed the answer is malformed and the result is None; an earlier,
  closed box is not used in its place.
- Only the `\\boxed{...}`, `\\boxed 5` and `\\fbox{...}` spellings; no `\\framebox` or
  `\\colorbox`.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_TAG_OPEN = re.compile(r"<(tool_call|tool_response)>", re.IGNORECASE)
_TAG_CLOSE = {
    "tool_call": re.compile(r"</tool_call>", re.IGNORECASE),
    "tool_response": re.compile(r"</tool_response>", re.IGNORECASE),
}
_CODE_FENCE = "```"


def _last_command(text: str, end: int) -> tuple[int, str]:
    """Position and name of the last box command starting before `end` (-1 if none)."""
    best, name = -1, ""
    for command in _BOX_COMMANDS:
        pos = text.rfind(command, 0, end)
        if pos > best:
            best, name = pos, command
    return best, name


def _matching_brace(text: str, open_pos: int, max_chars: int | None) -> int:
    """Index of the `}` closing the `{` at open_pos, or -1; escaped braces (`\\{`) are skipped."""
    # Mask escapes with same-length blanks so indices stay valid; `\\\\` first, so that
    # `\\\\{` (a TeX line break followed by a brace) keeps its real brace.
    end = len(text) if max_chars is None else min(len(text), open_pos + 2 + max_chars)
    masked = text[open_pos + 1 : end].replace("\\\\", "  ").replace("\\{", "  ").replace("\\}", "  ")
    depth, pos = 1, 0
    while True:
        close = masked.find("}", pos)
        if close == -1:
            return -1
        # Opening braces before this close raise the depth; depth only reaches 0 at a close.
        depth += masked.count("{", pos, close) - 1
        if depth == 0:
            return open_pos + 1 + close
        pos = close + 1


def _box_at(text: str, start: int, command: str, max_chars: int | None) -> tuple[str | None, int] | None:
    """(content, end) of the box command at start; content None when empty, unclosed or too long.

    `end` is the index just past the box. None when the command is not a box at all (`\\boxedfoo`).
    """
    pos = start + len(command)
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    if pos < len(text) and text[pos] == "{":
        close = _matching_brace(text, pos, max_chars)
        if close == -1:
            return None, len(text)
        return text[pos + 1 : close].strip() or None, close + 1
    if command == "\\boxed" and pos > start + len(command) and pos < len(text):
        # `\boxed 5`: one whitespace-delimited token, cut at a closing `$`.
        token = text[pos : len(text) if max_chars is None else pos + max_chars + 1]
        token = token.split(None, 1)[0].split("$", 1)[0]
        content = token if token and (max_chars is None or len(token) <= max_chars) else None
        return content, pos + len(token)
    return None


def extract_boxed(text: str, max_chars: int | None = None) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`) in text.

    Brace-balanced, with `\\{`/`\\}` treated as literal braces. Returns None when there is
    no box, when the last box is empty or unclosed, or (with max_chars) when its content is
    longer than max_chars. Linear in len(text); with max_chars, the brace matching looks at
    no more than max_chars characters.
    """
    boxes = extract_last_boxes(text, 1, max_chars)
    return boxes[0] if boxes else None


def extract_last_boxes(text: str, count: int, max_chars: int | None = None) -> list[str | None]:
    """Contents of the last `count` boxes of text, in text order (fewer if text has fewer).

    Each entry is what `extract_boxed` would give for that box (None: empty, unclosed or too
    long). A box that encloses a later one (`\\boxed{a \\boxed{b}}`) is skipped: the inner box
    counts, as in `extract_boxed`.
    """
    if not isinstance(text, str) or count <= 0:
        return []
    found: list[str | None] = []
    end, inner_start = len(text), len(text)
    while len(found) < count:
        start, command = _last_command(text, end)
        if start == -1:
            break
        end = start
        box = _box_at(text, start, command, max_chars)
        if box is None or box[1] > inner_start:  # not a box command, or a box around the last one
            continue
        found.append(box[0])
        inner_start = start
    return found[::-1]


def extract_all_boxes(text: str, max_chars: int | None = None) -> list[str | None]:
    """Contents of every box of text, in order (see `extract_last_boxes`)."""
    return extract_last_boxes(text, len(text), max_chars) if isinstance(text, str) else []


def strip_tool_calls(text: str) -> str:
    """text without `<tool_call>...</tool_call>` and `<tool_response>...</tool_response>` blocks.

    An opening tag without its closing tag drops everything after it: text the model left
    inside an unfinished tool call is not part of its answer. Stray closing tags are kept.
    """
    out, pos = [], 0
    while (match := _TAG_OPEN.search(text, pos)) is not None:
        out.append(text[pos : match.start()])
        close = _TAG_CLOSE[match.group(1).lower()].search(text, match.end())
        if close is None:
            return "".join(out)
        pos = close.end()
    out.append(text[pos:])
    return "".join(out)


def strip_code_blocks(text: str) -> str:
    """text without fenced (```) code blocks; an unclosed fence drops the rest of the text."""
    if _CODE_FENCE not in text:
        return text
    return "".join(text.split(_CODE_FENCE)[::2])


def answer_region(text: str) -> str:
    """The part of a final reply that may hold the answer: tool and code blocks removed."""
    return strip_code_blocks(strip_tool_calls(text))
