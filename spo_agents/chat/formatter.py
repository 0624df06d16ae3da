"""Chat formatting without drift: render once, then only append.

The drift problem. The obvious way to run a multi-turn episode is to keep a list of messages and
re-render the whole conversation with the chat template before every policy call. That silently
changes the tokens the policy already produced: the template may re-serialise a tool call's JSON,
drop earlier `<think>` blocks (Qwen3), and BPE may merge the sampled text differently from how it
was sampled. The log-probs recorded at generation time then belong to a different sequence.

What this module does instead:
- `initial_prompt_ids` renders the first prompt (system, tool schemas, user) with the chat
  template once, with the assistant generation header.
- `observation_ids` encodes whatever comes after a completion by the *fixed base* method: render a
  fixed base conversation `B` and `B + new_messages` (with the generation header), and take the
  token suffix. Because `B` never changes, the suffix depends only on the new messages, never on
  the episode's history, and the history is never re-tokenised. It is prefixed with the part of
  the assistant turn's closing (`<|im_end|>\\n` in ChatML) that the completion did not sample.
- Sampled ids are kept exactly as generated; this module never sees them except to check how the
  completion ended.

Tool schemas go through the template's own `tools=` argument when the template renders them
(detected by rendering a probe tool); a template without tool support (SmolLM2, Llama-3) keeps
its own format and gets the schemas in its system message, in the Hermes/Qwen wording that the
`<tool_call>` convention comes from. A bundled template is needed only by a tokenizer with no
chat template at all.

Templates that are not append-only. Qwen3's template drops the `<think>` reasoning of assistant
turns before the last user message. The formatter never re-renders history, so the model keeps
conditioning on its own earlier reasoning, exactly as sampled, and the learner trains on that
sequence; the official full rendering of the same conversation is shorter by those reasoning
blocks (and only by them: tests/chat/test_real_templates.py checks it). Within one user query
(tool calls and tool responses only) Qwen3's rendering keeps the reasoning and the two agree.

Left out on purpose: message bookkeeping (the rollout engine owns the episode), tool-call parsing
(the environment kit), and templates whose rendering of new messages depends on earlier turns in
a way the fixed base cannot reproduce; the formatter checks at construction that tool and user
messages can be appended token-exactly and raises a ValueError naming the problem otherwise.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Mapping, Sequence

__all__ = ["ChatFormatter", "load_template", "bundled_template_names", "DEFAULT_BASE_MESSAGES", "TOOLS_SYSTEM_SECTION",
           "template_renders_tools"]

# The fixed base conversation. It ends with a user turn, so appended tool/user messages render as
# they would after an assistant turn (the assistant turn's closing is handled separately).
DEFAULT_BASE_MESSAGES: tuple[Mapping[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello."},
)
_SENTINEL = "\u2063SPO_SENTINEL\u2063"
_PROBE_TOOL = {"type": "function", "function": {"name": "spo_probe_tool_7f3a", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}
TOOL_CALL_CLOSE = "</tool_call>"
# The tool section of Qwen2.5/Qwen3 (Hermes format), for templates that cannot render tools.
TOOLS_SYSTEM_SECTION = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\nFor each function call, "
    "return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def bundled_template_names() -> list[str]:
    """Names of the chat templates shipped in spo_agents/chat/templates/ (without `.jinja`)."""
    folder = resources.files("spo_agents.chat").joinpath("templates")
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))


def load_template(name: str) -> str:
    """The Jinja source of a bundled template, e.g. `load_template("chatml_tools")`."""
    path = resources.files("spo_agents.chat").joinpath("templates", f"{name}.jinja")
    if not path.is_file():
        raise ValueError(f"no bundled chat template {name!r}; bundled: {bundled_template_names()}")
    return path.read_text(encoding="utf-8")


def template_renders_tools(tokenizer: Any, template: str | None = None, **template_kwargs: Any) -> bool:
    """Whether a chat template (default: the tokenizer's) renders tool schemas passed as
    `tools=`: a probe tool's name must show up in the rendering."""
    try:
        text = tokenizer.apply_chat_template([dict(m) for m in DEFAULT_BASE_MESSAGES], tools=[_PROBE_TOOL],
                                             chat_template=template, add_generation_prompt=True, tokenize=False,
                                             **template_kwargs)
    except Exception:  # a template that chokes on tools= does not support them
        return False
    return _PROBE_TOOL["function"]["name"] in text


class ChatFormatter:
    """Token-exact prompt and observation encoding for one tokenizer and chat template.

    `template` is None (use `tokenizer.chat_template`), the name of a bundled template
    (`chatml_tools`, `qwen3_tools`, `smollm2`) or Jinja source. Extra keyword arguments are passed
    to the template (e.g. `enable_thinking=False` for `qwen3_tools`). The formatter holds no
    per-episode state, so one instance serves every slot.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: str | None = None,
        *,
        base_messages: Sequence[Mapping[str, Any]] = DEFAULT_BASE_MESSAGES,
        **template_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = self._resolve_template(tokenizer, template)
        self.template_kwargs = dict(template_kwargs)
        self._base_messages = [dict(m) for m in base_messages]
        self._base_ids = self.encode(self._render_checked(self._base_messages))
        self._close_ids = self._find_turn_close()
        self.renders_tools = self._renders_tools()
        self.end_of_turn_id = self._find_end_of_turn_id()
        eos = getattr(tokenizer, "eos_token_id", None)
        self._turn_end_ids = {i for i in (self.end_of_turn_id, eos) if isinstance(i, int)}
        for role in ("tool", "user"):  # what observations are made of: fail now, not mid-run
            self.observation_ids([{"role": role, "content": "probe"}])

    @staticmethod
    def _resolve_template(tokenizer: Any, template: str | None) -> str:
        if template is None:
            source = getattr(tokenizer, "chat_template", None)
            if not source:
                raise ValueError("the tokenizer has no chat_template; pass template= (e.g. 'chatml_tools')")
            return source
        if template in bundled_template_names():
            return load_template(template)
        if "{%" not in template and "{{" not in template:
            raise ValueError(f"{template!r} is neither a bundled template name nor Jinja source")
        return template

    # ------------------------------------------------------------------ rendering primitives
    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The template's text for `messages` (no tokenisation)."""
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(tools) if tools else None,
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **self.template_kwargs,
        )

    def _render_checked(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        try:
            return self.render(messages, **kwargs)
        except Exception as exc:  # jinja2 TemplateError, raise_exception(...) of the template
            roles = [m.get("role") for m in messages]
            raise ValueError(f"the chat template cannot render the roles {roles} that token-exact episodes "
                             f"append ({type(exc).__name__}: {exc}); pass a template that can, e.g. "
                             "ChatFormatter(tokenizer, 'chatml_tools')") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS or any other added special token."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens included (what the model actually produced)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def reply_text(self, completion_ids: Sequence[int]) -> str:
        """A completion's text as the environment (and so the reward) receives it: decoded with
        special tokens kept, minus the end-of-turn or EOS token that ended it (`<|im_end|>`,
        `<|eot_id|>`); a `</tool_call>` stop stays, it is part of the call."""
        ids = list(completion_ids)
        if ids and ids[-1] in self._turn_end_ids:
            ids.pop()
        return self.decode(ids)

    # ------------------------------------------------------------------ the episode's pieces
    def initial_prompt_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """The first prompt (system, tool schemas, user ...) ending with the assistant header."""
        if tools and not self.renders_tools:
            return self.encode(self.render(self.tools_in_system(messages, tools), add_generation_prompt=True))
        return self.encode(self.render(messages, tools=tools, add_generation_prompt=True))

    @staticmethod
    def tools_in_system(messages: Sequence[Mapping[str, Any]],
                        tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with the tool schemas described in the system message (one is added if
        there is none), for templates without tool support."""
        section = TOOLS_SYSTEM_SECTION.format(tools="".join("\n" + json.dumps(t) for t in tools))
        out = [dict(m) for m in messages]
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{section}" if out[0]["content"] else section
        else:
            out.insert(0, {"role": "system", "content": section})
        return out

    def observation_ids(
        self,
        new_messages: Sequence[Mapping[str, Any]],
        completion_ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Ids to append after a completion: turn close + new messages + next assistant header.

        `new_messages` are the messages since the last completion (tool results, a user turn).
        `completion_ids` is that completion as sampled; the part of the assistant turn's closing
        it did not produce (all of `<|im_end|>\\n` after a `</tool_call>` or length stop, only
        `\\n` after an end-of-turn stop) is prepended. None means the completion ended with the
        end-of-turn token.
        """
        if not new_messages:
            raise ValueError("observation_ids needs at least one new message")
        full_ids = self.encode(
            self._render_checked([*self._base_messages, *new_messages], add_generation_prompt=True)
        )
        base_len = len(self._base_ids)
        if full_ids[:base_len] != self._base_ids:
            roles = [m.get("role") for m in new_messages]
            raise ValueError(
                f"the chat template cannot be extended token-exactly: it renders the fixed base conversation "
                f"differently once {roles} messages are appended, so observations cannot be encoded without "
                "re-tokenising history; pass a template that only appends (e.g. 'chatml_tools')"
            )
        return self.turn_close_ids(completion_ids) + full_ids[base_len:]

    def turn_close_ids(self, completion_ids: Sequence[int] | None = None) -> list[int]:
        """The closing ids of an assistant turn that `completion_ids` did not already sample."""
        if completion_ids is None:
            if self.end_of_turn_id is None:
                return list(self._close_ids)
            return list(self._close_ids[1:])
        completion = list(completion_ids)
        for k in range(min(len(completion), len(self._close_ids)), 0, -1):
            if completion[-k:] == self._close_ids[:k]:
                return list(self._close_ids[k:])
        return list(self._close_ids)

    # ------------------------------------------------------------------ stops
    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """End-of-turn id, the tokenizer's EOS, and `</tool_call>` when it is a single token."""
        ids: list[int] = []
        if self.end_of_turn_id is not None:
            ids.append(self.end_of_turn_id)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.append(eos)
        tool_close = self.encode(TOOL_CALL_CLOSE)
        if len(tool_close) == 1:
            ids.append(tool_close[0])
        return tuple(dict.fromkeys(ids))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a completion: the tool-call close (the backend matches decoded text)."""
        return (TOOL_CALL_CLOSE,)

    # ------------------------------------------------------------------ template probing
    def _find_turn_close(self) -> list[int]:
        """Ids the template puts after an assistant message's content (e.g. `<|im_end|>\\n`)."""
        probe = [*self._base_messages, {"role": "assistant", "content": _SENTINEL}]
        text = self.render(probe)
        if _SENTINEL not in text:
            raise ValueError("the chat template does not render assistant message content verbatim")
        close_text = text.split(_SENTINEL)[-1]
        if not close_text:
            raise ValueError("the chat template does not close assistant turns with an end-of-turn marker")
        return self.encode(close_text)

    def _renders_tools(self) -> bool:
        return template_renders_tools(self.tokenizer, self.template, **self.template_kwargs)

    def _find_end_of_turn_id(self) -> int | None:
        """The first closing token when it is a special/added token the model samples to stop."""
        first = self._close_ids[0]
        token = self.tokenizer.convert_ids_to_tokens(first)
        added = {t for t in getattr(self.tokenizer, "all_special_tokens", [])}
        added.update(str(t) for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values())
        return first if token in added else None
