"""A soft-token file read once: its tokens and its sha256, handed on instead of the path.

Before an edit, three places need something from the token file: the model kind (the app's
settings and the CLI pick their defaults by it), the tokens (``FlowEditor``) and the file's sha256
(the PNG metadata and the app's example gallery, which records the file its results were made
with). Each reading the path for itself meant three reads and three hashes of the same file; a
``TokenFile`` is read and hashed once and passed along.

    token_file = TokenFile.load("tokens.safetensors")   # safetensors only, shapes checked
    token_file.kind, token_file.sha256
    FlowEditor(pipe, tokens=token_file)                 # checks that the tokens fit this model
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from softrepa.tokens import SoftTokens, file_sha256, load_tokens


@dataclass(frozen=True)
class TokenFile:
    """A token file as read: ``tokens`` passed the file checks of ``softrepa.tokens.read_token_file``
    (safetensors, never a pickle; tensor shapes match the config). Whether they fit a model is
    checked where they are attached (``FlowEditor.set_tokens``)."""

    path: Path
    tokens: SoftTokens
    sha256: str  # of the file's bytes

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenFile":
        """Read and check ``path`` once and hash it once; ``OSError`` / ``ValueError`` say what is wrong."""
        tokens = load_tokens(path)  # raises before the file is hashed when it is not a token file
        return cls(path=Path(path), tokens=tokens, sha256=file_sha256(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """The model kind the tokens were made for (a key of ``softrepa.models.KINDS``)."""
        return self.tokens.config.kind
