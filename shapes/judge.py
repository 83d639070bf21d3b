"""Ground-truth evaluator for the shapes world (docs/shapes.md).

The classifier (`shapes.classifier`) reads generated images back into scenes, and the captions'
statements are checked against them (`shapes.statements.check`).

What this module implements
---------------------------
* `score(images, samples)` / `score_predictions(scenes, samples)` - attribute accuracy, count
  accuracy, spatial accuracy, background accuracy and full-prompt accuracy (every statement of
  the caption holds in the predicted scene), overall and per caption grammar.
* `edit_outcomes(edited, pairs)` / `edit_summary(edited, pairs)` - FlowEdit on edit pairs: whether
  the changed attribute reads as the target, whether the other cells stayed, pixel distance.
* The command line: `python -m shapes.judge train --out assets/shapes-classifier.safetensors`
  (`shapes.classifier_training`), `... evaluate`,
  `... score --metadata DIR/metadata.jsonl [--image-root GENERATED_DIR]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from shapes.classifier import (DEFAULT_CLASSIFIER_PATH, ShapesClassifier, load_classifier, predict_scenes,
                               save_classifier)
from shapes.classifier_training import ClassifierTrainConfig, evaluate_classifier, train_classifier
from shapes.scenes import Scene, ShapesWorldConfig
from shapes.statements import check


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def score_predictions(predicted: Sequence[Scene], samples: Sequence[dict]) -> dict:
    """Caption metrics of predicted scenes against samples' statements (dicts with
    "statements" and "grammar", e.g. metadata.jsonl rows or generate_samples() items):

    attribute_acc  - mentioned attributes found on the bound objects (micro average)
    count_acc      - exact-count statements that hold
    spatial_acc    - position and relation statements that hold
    background_acc - background statements that hold
    full_prompt_acc - samples whose every statement holds
    Returned overall and per grammar ({"overall": {...}, "per_grammar": {grammar: {...}}})."""
    keys = ("attribute", "count", "spatial", "background")
    buckets: dict[str, dict[str, int]] = {}
    for scene, sample in zip(predicted, samples, strict=True):
        grid = sample.get("labels", {}).get("grid", scene.grid)
        if grid != scene.grid:  # a classifier for another world would score garbage, silently
            raise ValueError(f"the classifier reads a {scene.grid}x{scene.grid} grid but the samples are "
                             f"{grid}x{grid}: train one for this world (python -m shapes.judge train "
                             f"--grid {grid})")
        result = check(sample["statements"], scene)
        for name in ("overall", sample.get("grammar", "unknown")):
            empty = {"n": 0, "full": 0, **{f"{k}_{x}": 0 for k in keys for x in ("hits", "total")}}
            b = buckets.setdefault(name, empty)
            b["n"] += 1
            b["full"] += result.all_hold
            for k in keys:
                b[f"{k}_hits"] += getattr(result, f"{k}_hits")
                b[f"{k}_total"] += getattr(result, f"{k}_total")

    def summarise(b: dict) -> dict:
        out = {"n": b["n"], "full_prompt_acc": b["full"] / b["n"]}
        out.update({f"{k}_acc": _ratio(b[f"{k}_hits"], b[f"{k}_total"]) for k in keys})
        return out

    overall = buckets.pop("overall", None)
    return {
        "overall": summarise(overall) if overall else {"n": 0},
        "per_grammar": {g: summarise(b) for g, b in sorted(buckets.items())},
    }


def score(images, samples: Sequence[dict], classifier: ShapesClassifier | None = None) -> dict:
    """Classify `images` (one per sample, e.g. generated from the samples' captions) and score
    them against the samples' statements; see score_predictions for the metrics."""
    return score_predictions(predict_scenes(classifier, images), samples)


def edit_outcomes(edited, pairs: Sequence[dict], classifier: ShapesClassifier | None = None) -> list[dict]:
    """Per edit pair (``shapes.world.make_edit_pairs``) and its edited image: ``success`` (the changed
    attribute of the edited cell now reads as the target value) and ``preservation`` (the fraction of
    the other cells whose labels, empty or shape / colour / size / fill, are unchanged)."""
    outcomes = []
    for scene, pair in zip(predict_scenes(classifier, edited), pairs, strict=True):
        changed = pair["changed"]
        obj = scene.cells[changed["cell"]]
        source_cells = pair["source_labels"]["cells"]

        def same(i: int) -> bool:
            truth, seen = source_cells[i], scene.cells[i]
            if truth is None or seen is None:
                return truth is None and seen is None
            return all(truth[a] == getattr(seen, a) for a in ("shape", "colour", "size", "fill"))

        kept = [same(i) for i in range(len(source_cells)) if i != changed["cell"]]
        outcomes.append({"success": obj is not None and getattr(obj, changed["attribute"]) == changed["to"],
                         "preservation": sum(kept) / len(kept) if kept else 1.0})
    return outcomes


def edit_summary(edited, pairs: Sequence[dict], classifier: ShapesClassifier | None = None) -> dict:
    """Means over the pairs: ``success`` and ``preservation`` (``edit_outcomes``), and ``pixel_l1``
    (mean absolute difference to the source image, in [0, 1])."""
    outcomes = edit_outcomes(edited, pairs, classifier)
    distance = [float(np.abs(np.asarray(image, np.float32) - np.asarray(pair["source_image"], np.float32)).mean() / 255)
                for image, pair in zip(edited, pairs)]
    return {"success": float(np.mean([o["success"] for o in outcomes])),
            "preservation": float(np.mean([o["preservation"] for o in outcomes])), "pixel_l1": float(np.mean(distance))}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes.judge", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the ground-truth classifier and save it")
    train.add_argument("--out", default=str(DEFAULT_CLASSIFIER_PATH))
    train.add_argument("--steps", type=int, default=ClassifierTrainConfig.steps)
    train.add_argument("--batch-size", type=int, default=ClassifierTrainConfig.batch_size)
    train.add_argument("--lr", type=float, default=ClassifierTrainConfig.lr)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--grid", type=int, default=ShapesWorldConfig.grid, choices=(2, 3))
    train.add_argument("--resolution", type=int, default=ShapesWorldConfig.resolution)
    train.add_argument("--eval-n", type=int, default=2000, help="held-out renders for the accuracy report")
    evaluate = commands.add_parser("evaluate", help="per-attribute accuracy on fresh held-out renders")
    evaluate.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER_PATH))
    evaluate.add_argument("--n", type=int, default=2000)
    evaluate.add_argument("--seed", type=int, default=9001)
    evaluate.add_argument("--no-augment", action="store_true")
    score_cmd = commands.add_parser("score", help="caption metrics of images against a metadata.jsonl")
    score_cmd.add_argument("--metadata", required=True, help="metadata.jsonl written by shapes.world make")
    score_cmd.add_argument(
        "--image-root",
        default=None,
        help="folder holding the images under the rows' `image` paths "
        "(default: the metadata's folder, i.e. the ground-truth renders)",
    )
    score_cmd.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER_PATH))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        world = ShapesWorldConfig(resolution=args.resolution, grid=args.grid)
        train = ClassifierTrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
        )
        started, cpu_started = time.time(), time.process_time()
        model = train_classifier(world, train)
        minutes = (time.time() - started) / 60
        cpu_minutes = (time.process_time() - cpu_started) / 60
        report = {
            "augmented": evaluate_classifier(model, n=args.eval_n, seed=9001, apply_augment=True),
            "clean": evaluate_classifier(model, n=args.eval_n, seed=9001, apply_augment=False),
        }
        training = asdict(train) | {"minutes": round(minutes, 1), "cpu_minutes": round(cpu_minutes, 1)}
        heldout = report | {"n": args.eval_n, "seed": 9001, "split": "val"}
        metadata = {"world": world.to_dict(), "training": training, "heldout_accuracy": heldout}
        save_classifier(model, args.out, metadata)
        print(json.dumps({"out": args.out, **{k: training[k] for k in ("minutes", "cpu_minutes")}, **report}, indent=1))
    elif args.command == "evaluate":
        torch.set_num_threads(1)
        model = load_classifier(args.classifier)
        accuracy = evaluate_classifier(model, n=args.n, seed=args.seed, apply_augment=not args.no_augment)
        print(json.dumps(accuracy, indent=1))
    elif args.command == "score":
        torch.set_num_threads(1)
        rows = [json.loads(line) for line in open(args.metadata) if line.strip()]
        root = Path(args.image_root) if args.image_root else Path(args.metadata).parent
        images = [Image.open(root / row["image"]).convert("RGB") for row in rows]
        print(json.dumps(score(images, rows, load_classifier(args.classifier)), indent=1))
    else:
        raise ValueError(f"unknown command {args.command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
