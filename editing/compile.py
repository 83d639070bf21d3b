"""The compiled editor's warm-up: compile before the first person's edit (the compiling itself is
``softrepa.compile``: the transformer's repeated blocks, in place, shared with training)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editing.editor import FlowEditor


def warm_up(editor: FlowEditor) -> float:
    """Compile now rather than at the first person's edit: a two-step edit of the smallest grey
    picture the model takes, tokens off and, when the editor has them, on (each state is a graph;
    the graphs are dynamic, so every later size reuses them), each twice: the second reuses the
    cached source velocities and runs the target half alone, a batch of one on FLUX.1, which dynamo
    always compiles apart (it specializes sizes 0 and 1). Seconds taken."""
    import time

    from PIL import Image

    from editing.params import FlowEditParams

    start = time.perf_counter()
    side = max(editor.min_side or 0, 4 * editor.factor)  # editing.inputs.MIN_PATCHES patches
    picture = Image.new("RGB", (side, side), (128, 128, 128))
    params = FlowEditParams(steps=2, n_max=2, seed=0)
    for use_tokens in ([False, True] if editor.has_tokens else [False]):
        for _ in range(2):
            editor.edit(picture, "a picture", "another picture", params, use_tokens=use_tokens)
    return time.perf_counter() - start
