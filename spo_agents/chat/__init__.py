"""Chat formatting without drift: render the first prompt once, append observations by the
fixed-base method, keep sampled ids as generated. Bundled templates live in `templates/`."""

from spo_agents.chat.formatter import (
    DEFAULT_BASE_MESSAGES,
    TOOL_CALL_CLOSE,
    ChatFormatter,
    bundled_template_names,
    load_template,
)

__all__ = [
    "DEFAULT_BASE_MESSAGES",
    "TOOL_CALL_CLOSE",
    "ChatFormatter",
    "bundled_template_names",
    "load_template",
]
