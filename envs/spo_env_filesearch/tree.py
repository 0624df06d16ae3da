"""An in-memory, read-only file tree and the four tools that explore it (ls, cat, grep, find).

Why in memory: the environment must never touch the real file system, and a policy under RL
will send any path it likes (`/etc/passwd`, `../../..`, 1 MB strings). Paths here are only keys
of a dict: they are normalised with `posixpath.normpath` under a virtual root, so `..` can never
leave the tree and nothing outside the dict exists.

Why `grep` matches plain substrings and not regular expressions: a regex chosen by the model
can backtrack catastrophically (`(a+)+$`), and no task needs one. `find` matches file names with
shell wildcards (`*`, `?`, `[...]`) through `fnmatch`, whose translation is linear-time for
the short names of this tree (Python >= 3.9 emulates atomic groups for `*`), and the pattern
length is capped.

Every listing is capped (MAX_MATCHES lines for grep and find, MAX_LS_ENTRIES for ls) with a
line that says how many were left out; the environment additionally truncates each tool output
to `max_tool_output_chars`.
"""

from __future__ import annotations

import bisect
import fnmatch
import posixpath
from dataclasses import replace
from typing import Mapping

from spo_agents.env import Tool, ToolError

MAX_PATH_CHARS = 512
MAX_PATTERN_CHARS = 200
MAX_NAME_PATTERN_CHARS = 100
MAX_MATCHES = 40
MAX_LS_ENTRIES = 200


def normalize_path(path: str) -> str:
    """An absolute, normalised path; relative paths are taken from the root `/`."""
    if not isinstance(path, str) or len(path) > MAX_PATH_CHARS:
        raise ToolError(f"path must be a string of at most {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise ToolError("path contains a NUL character")
    normalized = posixpath.normpath("/" + path.strip())
    return "/" + normalized.lstrip("/")  # normpath keeps a leading '//' (POSIX), we do not


class VirtualTree:
    """A read-only tree of text files given as {absolute path: content}."""

    def __init__(self, files: Mapping[str, str]):
        self.files = {normalize_path(p): text for p, text in files.items()}
        self.sorted_paths = sorted(self.files)
        children: dict[str, set[str]] = {"/": set()}
        for path in self.sorted_paths:
            parent, name = posixpath.split(path)
            children.setdefault(parent, set()).add(name)
            while parent != "/":  # register every ancestor directory with its parent
                grand, dirname = posixpath.split(parent)
                children.setdefault(grand, set()).add(dirname + "/")
                children.setdefault(parent, set())
                parent = grand
        self.children = {d: sorted(names) for d, names in children.items()}

    # ----- helpers ------------------------------------------------------------------------
    def is_dir(self, path: str) -> bool:
        return path in self.children

    def files_under(self, path: str) -> list[str]:
        """Files at `path` (a file) or anywhere below it (a directory), in sorted order."""
        if path in self.files:
            return [path]
        if not self.is_dir(path):
            raise ToolError(f"{path}: no such file or directory")
        prefix = "/" if path == "/" else path + "/"
        start = bisect.bisect_left(self.sorted_paths, prefix)
        found = []
        for candidate in self.sorted_paths[start:]:
            if not candidate.startswith(prefix):
                break
            found.append(candidate)
        return found

    # ----- the tools (their docstrings become the schemas shown to the model) ---------------
    def ls(self, path: str = "/") -> str:
        """List a directory: sub-directories end with '/'.

        Args:
            path: Absolute directory path, e.g. "/etc".
        """
        path = normalize_path(path)
        if path in self.files:
            return path
        if not self.is_dir(path):
            raise ToolError(f"{path}: no such file or directory")
        entries = self.children[path]
        shown = entries[:MAX_LS_ENTRIES]
        more = f"\n... {len(entries) - len(shown)} more entries" if len(entries) > len(shown) else ""
        return ("\n".join(shown) or "(empty directory)") + more

    def cat(self, path: str) -> str:
        """Print the content of a file.

        Args:
            path: Absolute file path, e.g. "/etc/services/web.conf".
        """
        path = normalize_path(path)
        if path in self.files:
            return self.files[path]
        if self.is_dir(path):
            raise ToolError(f"{path}: is a directory (use ls)")
        raise ToolError(f"{path}: no such file or directory")

    def grep(self, pattern: str, path: str = "/") -> str:
        """Search files for lines containing a plain text pattern (not a regex; case-sensitive).

        Args:
            pattern: Literal text to look for, e.g. "DB_PORT=".
            path: A file, or a directory searched recursively. Output lines are "file:line:text".
        """
        if not pattern:
            raise ToolError("pattern must not be empty")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ToolError(f"pattern longer than {MAX_PATTERN_CHARS} characters")
        matches, total = [], 0
        for file_path in self.files_under(normalize_path(path)):
            for number, line in enumerate(self.files[file_path].splitlines(), start=1):
                if pattern in line:
                    total += 1
                    if len(matches) < MAX_MATCHES:
                        matches.append(f"{file_path}:{number}:{line}")
        if not matches:
            return "(no matches)"
        more = f"\n... {total - len(matches)} more matches" if total > len(matches) else ""
        return "\n".join(matches) + more

    def find(self, name: str, path: str = "/") -> str:
        """Find files whose name matches a shell pattern (* ? [abc]) below a directory.

        Args:
            name: File name or wildcard pattern, e.g. "web.service" or "*.env".
            path: Directory to search recursively.
        """
        if not name or len(name) > MAX_NAME_PATTERN_CHARS:
            raise ToolError(f"name must be 1 to {MAX_NAME_PATTERN_CHARS} characters")
        found = [p for p in self.files_under(normalize_path(path)) if fnmatch.fnmatchcase(posixpath.basename(p), name)]
        if not found:
            return "(no matches)"
        shown = found[:MAX_MATCHES]
        more = f"\n... {len(found) - len(shown)} more matches" if len(found) > len(shown) else ""
        return "\n".join(shown) + more


TOOL_NAMES = ("ls", "cat", "grep", "find")
# Schemas and argument validators are built once; each episode rebinds `fn` to its own tree.
_TEMPLATES = [Tool.from_function(getattr(VirtualTree({}), name), name=name) for name in TOOL_NAMES]


def tree_tools(tree: VirtualTree) -> list[Tool]:
    """The four tools bound to `tree`."""
    return [replace(template, fn=getattr(tree, template.name)) for template in _TEMPLATES]
