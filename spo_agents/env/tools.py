"""Tools as typed Python functions.

A tool is a plain function with type hints and a docstring. `@tool` (or `Tool.from_function`)
builds a pydantic model from the signature, which gives both the OpenAI function-calling JSON
schema offered to the model and strict argument validation when the model calls the tool.
Argument descriptions come from a Google-style `Args:` section of the docstring.

A tool returns text (anything else is converted with `str`). It signals a model-facing failure
by raising `ToolError`; any other exception is also caught by the environment and shown to the
model as an error, so a buggy tool ends up as an observation, never as a crash of `step`.

Tools pickle (environments are sent to other processes and copied): a tool that is a module
attribute (`@tool` on a module-level function) by reference, any other by its function, with
the pydantic model rebuilt on loading (it is a class made at run time, which pickle cannot
name).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

import pydantic


class ToolError(Exception):
    """A failure the model should see and can learn from (bad input, limits exceeded)."""


_SECTION = re.compile(r"^(\w+):\s*$")
_ARG_LINE = re.compile(r"^(\s+)\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_ARG_SECTIONS = {"args", "arguments", "parameters"}


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {argument: description})."""
    description: list[str] = []
    arg_docs: dict[str, str] = {}
    section, current, arg_indent = None, None, None
    for line in inspect.cleandoc(doc or "").splitlines():
        header = _SECTION.match(line)
        if header:
            section, current = header.group(1).lower(), None
            continue
        if section is None:
            description.append(line.strip())
        elif section in _ARG_SECTIONS:
            match = _ARG_LINE.match(line)
            indent = len(line) - len(line.lstrip())
            if match and (arg_indent is None or indent <= arg_indent):
                arg_indent, current = indent, match.group(2)
                arg_docs[current] = match.group(3).strip()
            elif current and line.strip():
                arg_docs[current] += " " + line.strip()
    return " ".join(part for part in description if part), arg_docs


def _arguments_model(fn: Callable[..., Any], name: str, arg_docs: dict[str, str]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args/**kwargs cannot be described to a model")
        if param.annotation is inspect.Parameter.empty:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (
            param.annotation,
            pydantic.Field(default, description=arg_docs.get(param.name)),
        )
    config = pydantic.ConfigDict(extra="forbid", strict=False)
    return pydantic.create_model(f"{name}_arguments", __config__=config, **fields)


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's titles, which only add tokens to the prompt."""
    schema = {k: v for k, v in schema.items() if k != "title"}
    if "properties" in schema:
        schema["properties"] = {
            key: {k: v for k, v in prop.items() if k != "title"} for key, prop in schema["properties"].items()
        }
    return schema


@dataclass(frozen=True)
class Tool:
    """A callable tool with its JSON schema and pydantic argument validator."""

    name: str
    description: str
    fn: Callable[..., Any]
    arguments_model: type[pydantic.BaseModel]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> "Tool":
        tool_name = name or fn.__name__
        doc_description, arg_docs = parse_docstring(fn.__doc__)
        model = _arguments_model(fn, tool_name, arg_docs)
        return cls(tool_name, description or doc_description, fn, model)

    @property
    def schema(self) -> dict[str, Any]:
        """OpenAI function-calling schema."""
        parameters = _clean_schema(self.arguments_model.model_json_schema())
        parameters.setdefault("properties", {})
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Validated keyword arguments, or ToolError with a readable message."""
        if not isinstance(arguments, dict):
            raise ToolError(f"arguments for {self.name!r} must be a JSON object, got {type(arguments).__name__}")
        try:
            parsed = self.arguments_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise ToolError(f"invalid arguments for {self.name!r}: {problems}") from None
        return {key: getattr(parsed, key) for key in type(parsed).model_fields}

    def __call__(self, arguments: Any) -> str:
        result = self.fn(**self.validate(arguments))
        return result if isinstance(result, str) else str(result)

    def __reduce__(self) -> tuple[Any, ...]:
        module = sys.modules.get(getattr(self.fn, "__module__", None) or "")
        qualname = getattr(self.fn, "__qualname__", "")
        if module is not None and _attribute(module, qualname) is self:
            return _import_attribute, (module.__name__, qualname)
        return _rebuild_tool, (self.fn, self.name, self.description)

    def __deepcopy__(self, memo: dict[int, Any]) -> "Tool":
        # the arguments model is immutable and shared; a bound method's object is copied
        return replace(self, fn=copy.deepcopy(self.fn, memo))


def _attribute(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _import_attribute(module: str, qualname: str) -> Any:
    return _attribute(importlib.import_module(module), qualname)


def _rebuild_tool(fn: Callable[..., Any], name: str, description: str) -> Tool:
    return Tool.from_function(fn, name=name, description=description)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator: `@tool` or `@tool(name="calc")` turns a typed function into a `Tool`."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    return obj if isinstance(obj, Tool) else Tool.from_function(obj)
