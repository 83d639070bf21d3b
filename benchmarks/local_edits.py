"""Local edits on the shapes world, where the edited cell is known exactly: no mask, the true cell's
mask, and the automatic mask (``editing.masks.AutoMask``), base model and soft tokens.

Held-out edit pairs (one attribute of one object changes; ``shapes.world.make_edit_pairs``), each
edited at the model's preset with the same seed in every mode. Per mode:

* success: the shapes classifier reads the changed attribute of the edited cell as its target value;
* preservation: the fraction of the other cells whose labels are unchanged;
* PSNR outside: PSNR of the pixels outside the edited cell against the input, pooled over all pairs
  (every outside pixel of every pair in one PSNR, ``torchmetrics``), so "inf" means every one of
  them equals the input;
* auto IoU: pixel IoU of the automatic mask with the true cell.

``--tune`` chooses the automatic mask's settings on *other* pairs (``--tune-seed``): it records the
per-step |v_delta| maps of one unmasked edit per pair and scores every (steps, threshold, dilate)
by IoU with the true cell, without re-editing.

    python benchmarks/local_edits.py            # 48 held-out pairs
    python benchmarks/local_edits.py --quick    # 12 pairs, a few minutes
    python benchmarks/local_edits.py --tune     # the AutoMask sweep on tuning pairs

Ends with ``RESULT success_nomask=.. success_mask=.. success_auto=.. psnr_out_nomask=.. psnr_out_mask=..
psnr_out_auto=.. auto_iou=.. model=.. tokens=.. edits=..`` (base model, no tokens; the tokens rows are in the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from editing.editor import FlowEditor
from editing.masks import AutoMask
from editing.presets import default_preset_name, get_preset
from shapes.judge import edit_outcomes, load_classifier
from shapes.world import edited_cell_mask, make_edit_pairs, pooled_psnr
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.runtime import resolve_device

KIND = "shapes-sd3"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENS = REPO / "assets" / "shapes-sd3-softrepa.safetensors"
MODES = ("nomask", "mask", "auto")
TUNE_GRID = {"steps": (1, 3, 5, 8, 12), "threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "dilate": (0, 1, 2, 3)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=KINDS[KIND].hub_id)
    parser.add_argument("--tokens", default=str(DEFAULT_TOKENS), help="token file ('none': base model only)")
    parser.add_argument("--edits", type=int, default=48, help="held-out edit pairs")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out edit pairs")
    parser.add_argument("--tune", action="store_true", help="sweep AutoMask settings on tuning pairs instead")
    parser.add_argument("--tune-seed", type=int, default=99, help="seed of the tuning pairs (not the held-out ones)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/local_edits", help="results.json goes here")
    parser.add_argument("--quick", action="store_true", help="12 pairs")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--auto-steps", type=int, default=AutoMask.steps, help="AutoMask steps (default: the library's)")
    parser.add_argument("--auto-threshold", type=float, default=AutoMask.threshold)
    parser.add_argument("--auto-dilate", type=int, default=AutoMask.dilate)
    args = parser.parse_args(argv)
    if args.quick:
        args.edits = 12
    return args


def iou(found: np.ndarray, truth: np.ndarray) -> float:
    found, truth = found > 0.5, truth > 0.5
    return float((found & truth).sum() / max(1, (found | truth).sum()))


def run_mode(editor, pairs, params, mode: str, use_tokens: bool, resolution: int, auto: AutoMask
             ) -> tuple[list, list]:
    """The edited images and (auto mode) the masks found."""
    images, masks = [], []
    for pair in tqdm(pairs, desc=f"{mode} tokens={use_tokens}", leave=False):
        mask = {"nomask": None, "mask": edited_cell_mask(pair, resolution), "auto": auto}[mode]
        result = editor.edit(pair["source_image"], pair["source_prompt"], pair["target_prompt"], params,
                             use_tokens=use_tokens, mask=mask)
        images.append(result.image)
        masks.append(result.mask.values if mode == "auto" else None)
    return images, masks


def evaluate(editor, pairs, classifier, methods: list[tuple[str, bool]], modes: list[str], resolution: int,
             auto: AutoMask) -> dict:
    rows = {}
    for (method, use_tokens), mode in itertools.product(methods, modes):
        params = get_preset(default_preset_name(KIND, use_tokens)).params
        start = time.perf_counter()
        images, masks = run_mode(editor, pairs, params, mode, use_tokens, resolution, auto)
        outcomes = edit_outcomes(images, pairs, classifier)
        success = np.array([o["success"] for o in outcomes], np.float64)
        row = {"success": float(success.mean()), "success_se": float(success.std(ddof=1) / np.sqrt(len(success))),
               "preservation": float(np.mean([o["preservation"] for o in outcomes])),
               "psnr_out": pooled_psnr(images, pairs, resolution), "seconds": time.perf_counter() - start}
        if mode == "auto":
            row["auto_iou"] = float(np.mean([iou(m, edited_cell_mask(p, resolution)) for m, p in zip(masks, pairs)]))
            row["auto_coverage"] = float(np.mean([m.mean() for m in masks]))
        rows[f"{method}/{mode}"] = row
        print(f"{method} {mode}: success {row['success']:.3f} preservation {row['preservation']:.3f} "
              f"psnr_out {row['psnr_out']:.2f} ({row['seconds']:.0f} s)", flush=True)
    return rows


@dataclasses.dataclass(frozen=True)
class _RecordingAutoMask(AutoMask):
    """An AutoMask that keeps the evidence it was given (the tuning sweep scores it offline)."""

    record: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def find(self, scores):
        self.record.extend(score.clone() for score in scores)
        return super().find(scores)


def tune(editor, pairs, resolution: int) -> list[dict]:
    """IoU with the true cell of every AutoMask setting in TUNE_GRID, from one recorded edit per pair."""
    params = get_preset(default_preset_name(KIND, False)).params
    evidence, truths = [], []
    for pair in tqdm(pairs, desc="recording |v_delta|", leave=False):
        recorder = _RecordingAutoMask(steps=params.n_max)
        editor.edit(pair["source_image"], pair["source_prompt"], pair["target_prompt"], params, use_tokens=False,
                    mask=recorder)
        evidence.append(recorder.record)
        truths.append(edited_cell_mask(pair, resolution))
    factor = resolution // evidence[0][0].shape[-1]
    rows = []
    for steps, threshold, dilate in itertools.product(*TUNE_GRID.values()):
        finder = AutoMask(steps=steps, threshold=threshold, dilate=dilate)
        ious = [iou(finder.find(scores[:steps])[0, 0].repeat_interleave(factor, 0).repeat_interleave(factor, 1)
                    .numpy(), truth) for scores, truth in zip(evidence, truths)]
        rows.append({**finder.to_dict(), "iou": float(np.mean(ious))})
    return sorted(rows, key=lambda row: -row["iou"])


def print_table(rows: dict, name: str, n: int) -> None:
    print(f"\nmodel: {name}; {n} held-out edit pairs; success with its standard error")
    print("| method | mask | success | preservation | PSNR outside (dB) | auto IoU | seconds |")
    print("|---|---|---|---|---|---|---|")
    for key, row in rows.items():
        method, mode = key.split("/")
        auto = f"{row['auto_iou']:.3f}" if "auto_iou" in row else "-"
        print(f"| {method} | {mode} | {row['success']:.3f} ± {row['success_se']:.3f} | {row['preservation']:.3f} "
              f"| {row['psnr_out']:.2f} | {auto} | {row['seconds']:.0f} |")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, KIND, device=resolve_device(args.device), progress_bar=False)
    with_tokens = args.tokens.lower() != "none"
    editor = FlowEditor(pipe, tokens=args.tokens if with_tokens else None, max_side=KINDS[KIND].resolution,
                        max_sequence_length=KINDS[KIND].max_sequence_length)
    resolution = KINDS[KIND].resolution
    name = model_label(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        rows = tune(editor, make_edit_pairs(args.edits, seed=args.tune_seed), resolution)
        print(f"\nAutoMask settings by IoU with the true cell ({args.edits} tuning pairs, seed {args.tune_seed}):")
        print("| steps | threshold | dilate | IoU |\n|---|---|---|---|")
        for row in rows[:10]:
            print(f"| {row['steps']} | {row['threshold']:g} | {row['dilate']} | {row['iou']:.3f} |")
        (out / "tune.json").write_text(json.dumps(rows, indent=1))
        best, default = rows[0], AutoMask().to_dict()
        default_iou = next(row["iou"] for row in rows if all(row[k] == v for k, v in default.items()))
        print(f"RESULT best_steps={best['steps']} best_threshold={best['threshold']:g} best_dilate={best['dilate']} "
              f"best_iou={best['iou']:.3f} default_iou={default_iou:.3f} model={name} edits={args.edits}")
        return {"tune": rows}
    pairs = make_edit_pairs(args.edits, seed=args.seed)
    methods = [("base", False)] + ([("tokens", True)] if with_tokens else [])
    auto = AutoMask(steps=args.auto_steps, threshold=args.auto_threshold, dilate=args.auto_dilate)
    auto.check()
    rows = evaluate(editor, pairs, load_classifier(), methods, args.modes, resolution, auto)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1, default=str))
    print_table(rows, name, len(pairs))
    print(f"auto mask: {auto.to_dict()}")
    if args.modes != list(MODES):
        return rows
    base = {mode: rows[f"base/{mode}"] for mode in MODES}
    print(" ".join(["RESULT"] + [f"success_{m}={base[m]['success']:.3f}" for m in MODES]
                   + [f"psnr_out_{m}={base[m]['psnr_out']:.2f}" for m in MODES]
                   + [f"auto_iou={base['auto']['auto_iou']:.3f}", f"model={name}",
                      f"tokens={Path(args.tokens).name if with_tokens else 'none'}", f"edits={len(pairs)}"]))
    return rows


if __name__ == "__main__":
    main()
