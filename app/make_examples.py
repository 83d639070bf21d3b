"""Precompute the gallery's example edits so they load instantly in the app.

    python -m app.make_examples                                     # the bundled shapes model + tokens
    python -m app.make_examples --model stabilityai/stable-diffusion-3-medium-diffusers --kind sd3 \\
        --tokens sd3-tokens.safetensors                             # photos (needs scikit-image), on a GPU

Writes ``<out>/<kind>/``: each example's input PNG, its result without and with soft tokens (PNGs with
the parameters in their metadata) and ``examples.json``, which names the model and token file that
made them. The app shows the results only when it runs that same model and tokens; otherwise the
examples still load their inputs. Rerunning replaces the folder's results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from app.settings import EXAMPLES_DIR, SettingsError, add_model_arguments, resolve_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.make_examples", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="examples folder (default assets/examples)")
    parser.add_argument("--preset", help="preset for the results (default: the model's tokens preset)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = resolve_settings(args, os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    from app.examples import MANIFEST_NAME, builtin_examples, produced_by, write_manifest
    from app.service import load_editor
    from editing.presets import default_preset_name, get_preset
    from softrepa.images import write_png
    from softrepa.models import KINDS

    out = Path(args.out)
    folder = out / settings.kind
    print(f"loading {settings.describe()}", flush=True)
    try:
        loaded = load_editor(settings)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    editor = loaded.editor
    params = get_preset(args.preset or default_preset_name(settings.kind, True)).params

    staging = out / f".{settings.kind}.staging"  # built aside, swapped in at the end: no half-written set
    shutil.rmtree(staging, ignore_errors=True)
    examples = builtin_examples(settings.kind, staging / "inputs")[: args.limit]
    if not examples:
        print("error: no examples for this model kind (SD3 photos need scikit-image)", file=sys.stderr)
        return 2
    token_states = [False, True] if editor.has_tokens else [False]
    max_side = KINDS[settings.kind].resolution  # the app's default max side (the editor caps it)
    for example in examples:
        prepared = editor.prepare(example.image, max_side=max_side)
        source = staging / f"{example.name}.png"
        example.image = str(write_png(prepared.image, source))
        for use_tokens in token_states:
            started = time.perf_counter()
            with torch.inference_mode():
                result = editor.edit(prepared, example.source_prompt, example.target_prompt, params,
                                     use_tokens=use_tokens)
            key = "with_tokens" if use_tokens else "without_tokens"
            example.outputs[key] = str(result.save(staging / f"{example.name}__{key}.png"))
            print(f"{example.name} {key}: {time.perf_counter() - started:.1f} s", flush=True)
        example.params = params.to_dict()
    shutil.rmtree(staging / "inputs", ignore_errors=True)
    tokens_sha = editor.tokens_info["sha256"] if editor.tokens_info else None
    write_manifest(examples, staging / MANIFEST_NAME, produced_by(settings.model_label, tokens_sha))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    print(f"wrote {len(examples)} examples to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
