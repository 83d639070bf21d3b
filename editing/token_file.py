"""A soft-token file read once: its tokens and its sha256, handed on instead of the path.

Before an edit, three places need something from the token file: the model kind (the app's
settings and the CLI pick their defaults by it), the tokens (``FlowEditor``) and the file's sha256
(the PNG metadata and the app's example gallery, which records the file its results were made
with). Each reading the path for itself meant three reads and three hashes of the same file; a
``TokenFile`` is read and hashed once and passed along.

    token_file = TokenFile.load("tokens.safetensors")   # safetensors only, shapes checked
    TokenFile.load("user/repo")                          # or a Hub reference (softrepa.tokens.resolve_tokens_path)
    token_file.kind, token_file.sha256
    FlowEditor(pipe, tokens=token_file)                 # checks that the tokens fit this model
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from softrepa.tokens import SoftTokens, file_sha256, load_tokens, resolve_tokens_path


@dataclass(frozen=True)
class TokenFile:
    """A token file as read: ``tokens`` passed the file checks of ``softrepa.tokens.read_token_file``
    (safetensors, never a pickle; tensor shapes match the config). Whether they fit a model is
    checked where they are attached (``FlowEditor.set_tokens``)."""

    path: Path  # the local file read (for a Hub reference: its file in the huggingface_hub cache)
    tokens: SoftTokens
    sha256: str  # of the file's bytes

    @classmethod
    def load(cls, path: str | os.PathLike, sha256: str | None = None) -> "TokenFile":
        """Read and check ``path`` (a file, or a Hub reference fetched once) and hash it once;
        ``OSError`` / ``ValueError`` say what is wrong. ``sha256``: the local file's hash when the
        caller already has it (the app's gallery hashes the file before torch loads)."""
        local = resolve_tokens_path(path)
        tokens = load_tokens(local)  # raises before the file is hashed when it is not a token file
        return cls(path=local, tokens=tokens, sha256=sha256 or file_sha256(local))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """The model kind the tokens were made for (a key of ``softrepa.models.KINDS``)."""
        return self.tokens.config.kind
