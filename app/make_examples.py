"""Precompute the gallery's example edits so they load instantly in the app, and ship only edits that work.

    python -m app.make_examples                                     # the bundled shapes model + tokens
    python -m app.make_examples --count 6 --candidates 48 --pair-seed 0 --threads 2
    python -m app.make_examples --model stabilityai/stable-diffusion-3-medium-diffusers --kind sd3 \\
        --tokens sd3-tokens.safetensors                             # photos (needs scikit-image), on a GPU

Writes ``<out>/<kind>/``: each example's input PNG, its result without and with soft tokens (PNGs with
the parameters in their metadata) and ``examples.json``, which names the model and token file that
made them. The app shows the results only when it runs that same model and tokens; otherwise the
examples still load their inputs. Rerunning replaces the folder's results.

The shapes model's examples are *checked*: candidate edit pairs (``shapes.world.make_edit_pairs``,
held-out "val" split, ``--pair-seed``) are edited at the preset without and with tokens, and the
shapes classifier reads each result (``check_outputs``: ``shapes.judge.edit_outcomes``, the edited
object's changed attribute must read as the target value and every other cell must be unchanged).
A pair is shipped only when at least one result passes; pairs where the tokens change the outcome
(one passes, the other does not) are shipped first, up to half the gallery, then pairs that pass
both ways, varied over the attribute changed. The caption says which (``caption_for``), and the
manifest keeps each verdict (``checks``) and the pair (``source``) so a test can judge the files
again. One more example is a local edit: the changed object's cell as a drawn mask, on a pair whose
unmasked edit changed other cells, its files in ``masked/`` (``--no-mask-example`` leaves it out).
SD3 photos have no classifier: they are shipped unchecked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.settings import EXAMPLES_DIR, SettingsError, add_model_arguments, resolve_settings

SPLIT = "val"  # held-out scenes: the model and its tokens never trained on them
TOKEN_KEYS = {False: "without_tokens", True: "with_tokens"}
MASK_TRIES = 6  # pairs tried for the local-edit example
MASKED_FOLDER = "masked"  # the local-edit example's files (its input, mask, results and their masks)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.make_examples", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", default=str(EXAMPLES_DIR), help="examples folder (default assets/examples)")
    parser.add_argument("--preset", help="preset for the results (default: the model's tokens preset)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    shapes = parser.add_argument_group("shapes model")
    shapes.add_argument("--count", type=int, default=6, help="examples to ship, besides the masked one (default 6)")
    shapes.add_argument("--candidates", type=int, default=48, help="edit pairs tried (default 48)")
    shapes.add_argument("--pair-seed", type=int, default=0, help="seed of the candidate pairs (default 0)")
    shapes.add_argument("--no-mask-example", action="store_true", help="no local-edit (masked) example")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- judging shapes edits


def source_pair(source: dict[str, Any]) -> dict:
    """The shapes-world edit pair an example's ``source`` names (its images rendered)."""
    from shapes.scenes import Scene
    from shapes.world import make_edit_pair, render

    pair = make_edit_pair(source["index"], source["seed"], split=source["split"])
    pair["source_image"] = render(Scene.from_dict(pair["source_labels"]), source["resolution"])
    return pair


def check_outputs(pair: dict, images: dict[str, Any], classifier=None) -> dict[str, dict[str, Any]]:
    """The classifier's verdict on each edited image of ``pair`` (key -> PIL image): ``success`` (the
    changed attribute of the edited cell reads as the target value), ``preservation`` (the share of
    the other cells read unchanged), ``passed`` (both: success and every other cell unchanged) and
    ``read`` (the changed attribute as read, None when the cell reads empty)."""
    from shapes.classifier import load_classifier, predict_scenes
    from shapes.judge import edit_outcomes

    classifier = classifier if classifier is not None else load_classifier()
    keys = list(images)
    rgb = [images[key].convert("RGB") for key in keys]
    outcomes = edit_outcomes(rgb, [pair] * len(keys), classifier)
    scenes = predict_scenes(classifier, rgb)
    changed = pair["changed"]
    verdicts = {}
    for key, outcome, scene in zip(keys, outcomes, scenes):
        cell = scene.cells[changed["cell"]]
        verdicts[key] = {"success": bool(outcome["success"]), "preservation": round(float(outcome["preservation"]), 4),
                         "passed": bool(outcome["success"]) and outcome["preservation"] == 1.0,
                         "read": None if cell is None else cell.attribute(changed["attribute"])}
    return verdicts


def _what_went_wrong(pair: dict, verdict: dict[str, Any]) -> str:
    changed = pair["changed"]
    noun = pair["source_labels"]["cells"][changed["cell"]]["shape"]
    problems = []
    if not verdict["success"]:
        if verdict["read"] is None:
            problems.append(f"the {noun} disappears")
        elif verdict["read"] == changed["from"]:
            problems.append(f"the {changed['attribute']} does not change")
        else:
            problems.append(f"the {changed['attribute']} becomes {verdict['read']}, not {changed['to']}")
    if verdict["preservation"] < 1.0:
        problems.append("other objects change too")
    return " and ".join(problems)


def caption_for(pair: dict, checks: dict[str, dict[str, Any]], mask_mode: str = "none") -> str:
    """What an example shows, from its verdicts: e.g. "the star's fill, outline to solid: succeeds with and
    without tokens", "tokens needed: ... succeeds only with tokens (without them the fill does not
    change)"; a masked example starts with "local edit, drawn mask on the ...'s cell"."""
    changed = pair["changed"]
    noun = pair["source_labels"]["cells"][changed["cell"]]["shape"]
    edit = f"the {noun}'s {changed['attribute']}, {changed['from']} to {changed['to']}"
    prefix = f"local edit, drawn mask on the {noun}'s cell: " if mask_mode != "none" else ""
    suffix = "; outside the mask the input is kept pixel for pixel" if mask_mode != "none" else ""
    passed = {key: checks[key]["passed"] for key in checks}
    if all(passed.values()):
        ways = "with and without tokens" if len(passed) > 1 else "without tokens"
        return f"{prefix}{edit}: succeeds {ways}{suffix}"
    if passed.get("with_tokens"):
        why = _what_went_wrong(pair, checks["without_tokens"])
        return f"tokens needed: {prefix}{edit} succeeds only with tokens (without them {why}){suffix}"
    if passed.get("without_tokens"):
        why = _what_went_wrong(pair, checks["with_tokens"])
        return f"tokens hurt: {prefix}{edit} succeeds only without tokens (with them {why}){suffix}"
    raise ValueError(f"no result of {edit} passes: not an example")


# ----------------------------------------------------------------------------- searching shapes pairs


@dataclass
class Trial:
    """One candidate pair edited at the preset: its results (key -> EditResult) and their verdicts."""

    pair: dict
    results: dict[str, Any]
    checks: dict[str, dict[str, Any]]
    mask: Any = None  # the drawn mask (PIL, L) when the results are a local edit
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """"both", "tokens-needed", "tokens-hurt" or "neither" ("both" = every result passes, also when
        there are no tokens and so one result)."""
        passed = {key: verdict["passed"] for key, verdict in self.checks.items()}
        if all(passed.values()):
            return "both"
        if passed.get("with_tokens"):
            return "tokens-needed"
        return "tokens-hurt" if passed.get("without_tokens") and "with_tokens" in passed else "neither"


def cell_mask(pair: dict, resolution: int):
    """The pair's edited cell as a mask image (L, white = may change): what a person would paint."""
    from editing.masks import mask_image
    from shapes.world import edited_cell_mask

    return mask_image(edited_cell_mask(pair, resolution))


def run_trial(editor, pair: dict, params, token_states: list[bool], classifier, mask=None) -> Trial:
    import torch

    results = {}
    for use_tokens in token_states:
        with torch.inference_mode():
            results[TOKEN_KEYS[use_tokens]] = editor.edit(pair["source_image"], pair["source_prompt"],
                                                          pair["target_prompt"], params, use_tokens=use_tokens,
                                                          mask=mask)
    checks = check_outputs(pair, {key: result.image for key, result in results.items()}, classifier)
    return Trial(pair, results, checks, mask)


def _log_trial(trial: Trial, label: str) -> None:
    changed = trial.pair["changed"]
    verdicts = ", ".join(f"{key} {'pass' if v['passed'] else 'FAIL'} (read {v['read']}, kept {v['preservation']:.2f})"
                         for key, v in trial.checks.items())
    print(f"{label} pair {trial.pair['index']:02d} {changed['attribute']} {changed['from']}->{changed['to']}: "
          f"{verdicts} => {trial.kind}", flush=True)


def choose(trials: list[Trial], count: int) -> list[Trial]:
    """Pairs where the tokens change the outcome first (at most half of ``count``, alternating the two
    directions), then pairs that pass both ways, round robin over the attribute changed; the gallery
    lists the both-ways ones first."""
    contrast = {kind: [t for t in trials if t.kind == kind] for kind in ("tokens-needed", "tokens-hurt")}
    picked: list[Trial] = []
    while len(picked) < count // 2 and any(contrast.values()):
        for kind in contrast:
            if contrast[kind] and len(picked) < count // 2:
                picked.append(contrast[kind].pop(0))
    by_attribute: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        if trial.kind == "both":
            by_attribute[trial.pair["changed"]["attribute"]].append(trial)
    both: list[Trial] = []
    while len(picked) + len(both) < count and any(by_attribute.values()):
        for attribute in sorted(by_attribute, key=lambda a: by_attribute[a][0].pair["index"] if by_attribute[a] else 0):
            if by_attribute[attribute] and len(picked) + len(both) < count:
                both.append(by_attribute[attribute].pop(0))
    return sorted(both, key=lambda t: t.pair["index"]) + sorted(picked, key=lambda t: t.pair["index"])


def find_mask_trial(editor, trials: list[Trial], chosen: list[Trial], params, token_states: list[bool],
                    classifier, resolution: int) -> Trial | None:
    """A local edit worth showing: a pair whose unmasked edit (tokens on when there are tokens) changed
    other cells, edited again with its cell as a drawn mask, where every masked result passes."""
    key = TOKEN_KEYS[token_states[-1]]
    taken = {t.pair["index"] for t in chosen}
    spilled = [t for t in trials if t.pair["index"] not in taken and t.checks[key]["preservation"] < 1.0]
    for trial in spilled[:MASK_TRIES]:
        masked = run_trial(editor, trial.pair, params, token_states, classifier, cell_mask(trial.pair, resolution))
        _log_trial(masked, "masked")
        if all(v["passed"] for v in masked.checks.values()):
            masked.notes.append(f"unmasked, {key}: {_what_went_wrong(trial.pair, trial.checks[key])}")
            return masked
    return None


def search_shapes(editor, args: argparse.Namespace, params, token_states: list[bool], resolution: int
                  ) -> list[Trial]:
    """Edit ``--candidates`` held-out pairs, judge them, and pick the gallery (plus a masked example)."""
    from shapes.classifier import load_classifier
    from shapes.world import make_edit_pairs

    classifier = load_classifier()
    trials = []
    for pair in make_edit_pairs(args.candidates, seed=args.pair_seed, split=SPLIT):
        trials.append(run_trial(editor, pair, params, token_states, classifier))
        _log_trial(trials[-1], "candidate")
    kinds = {kind: sum(t.kind == kind for t in trials) for kind in ("both", "tokens-needed", "tokens-hurt", "neither")}
    print(f"{len(trials)} candidates: {kinds}", flush=True)
    chosen = choose(trials, args.count)
    if not args.no_mask_example:
        masked = find_mask_trial(editor, trials, chosen, params, token_states, classifier, resolution)
        if masked is None:
            print("no local-edit example: no masked candidate passed", flush=True)
        else:
            chosen.append(masked)
    return chosen


# ----------------------------------------------------------------------------- writing


def write_shapes_examples(chosen: list[Trial], staging: Path, params, resolution: int, pair_seed: int) -> list:
    from app.examples import Example
    from softrepa.images import write_png

    examples = []
    for trial in chosen:
        pair, changed = trial.pair, trial.pair["changed"]
        name = f"shapes-{pair['index']:02d}-{changed['attribute']}" + ("-mask" if trial.mask is not None else "")
        # a masked example in its own folder: its mask images are not pictures to edit or describe
        folder = staging / MASKED_FOLDER if trial.mask is not None else staging
        folder.mkdir(parents=True, exist_ok=True)
        image = str(write_png(pair["source_image"], folder / f"{name}.png"))
        mask_mode = "drawn" if trial.mask is not None else "none"
        example = Example(name, image, pair["source_prompt"], pair["target_prompt"], params=params.to_dict(),
                          caption=caption_for(pair, trial.checks, mask_mode), checks=trial.checks, mask_mode=mask_mode,
                          source={"world": "shapes", "split": SPLIT, "seed": pair_seed, "index": pair["index"],
                                  "resolution": resolution})
        if trial.mask is not None:
            example.mask = str(write_png(trial.mask, folder / f"{name}.mask.png"))
        for key, result in trial.results.items():
            example.outputs[key] = str(result.save(folder / f"{name}__{key}.png"))
        print(f"{name}: {example.caption}" + "".join(f" ({note})" for note in trial.notes), flush=True)
        examples.append(example)
    return examples


def write_photo_examples(editor, kind: str, staging: Path, params, token_states: list[bool], max_side: int,
                         limit: int | None = None) -> list:
    """SD3 photos (scikit-image): every example (the first ``limit``), unchecked (no classifier reads photos)."""
    import torch

    from app.examples import builtin_examples
    from softrepa.images import write_png

    examples = builtin_examples(kind, staging / "inputs")[:limit]
    for example in examples:
        prepared = editor.prepare(example.image, max_side=max_side)
        example.image = str(write_png(prepared.image, staging / f"{example.name}.png"))
        for use_tokens in token_states:
            started = time.perf_counter()
            with torch.inference_mode():
                result = editor.edit(prepared, example.source_prompt, example.target_prompt, params,
                                     use_tokens=use_tokens)
            key = TOKEN_KEYS[use_tokens]
            example.outputs[key] = str(result.save(staging / f"{example.name}__{key}.png"))
            print(f"{example.name} {key}: {time.perf_counter() - started:.1f} s", flush=True)
        example.params = params.to_dict()
    shutil.rmtree(staging / "inputs", ignore_errors=True)
    return examples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = resolve_settings(args, os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from app.examples import MANIFEST_NAME, produced_by, write_manifest
    from app.loading import load_editor
    from editing.presets import default_preset_name, get_preset
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
    token_states = [False, True] if editor.has_tokens else [False]
    resolution = KINDS[settings.kind].resolution  # the app's default max side (the editor caps it)

    staging = out / f".{settings.kind}.staging"  # built aside, swapped in at the end: no half-written set
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if settings.kind == "shapes-sd3":
        chosen = search_shapes(editor, args, params, token_states, resolution)
        examples = write_shapes_examples(chosen[: args.limit], staging, params, resolution, args.pair_seed)
    else:
        examples = write_photo_examples(editor, settings.kind, staging, params, token_states, resolution, args.limit)
    if not examples:
        print("error: no examples for this model kind (SD3 photos need scikit-image; shapes: no candidate passed)",
              file=sys.stderr)
        return 2
    tokens_sha = editor.tokens_info["sha256"] if editor.tokens_info else None
    write_manifest(examples, staging / MANIFEST_NAME, produced_by(settings.model_label, tokens_sha))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    print(f"wrote {len(examples)} examples to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
