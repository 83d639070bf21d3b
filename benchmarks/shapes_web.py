"""Where SoftREPA helps, with a control: tokens against prompt tuning on a web-pretrained and a
clean base model of the shapes world (docs/shapes_results.md#when-do-the-tokens-help).

For each base model (a "web" base pretrained on web-like captions, ``shapes/web_captions.py``, and
the shipped clean base) and each of its token files (SoftREPA, prompt tuning = the same tokens with
the denoising loss only, SoftREPA without the denoising term, all trained on the same clean pairs):

* text-to-image on the same clean held-out captions and seeds at CFG 4: full-prompt, attribute
  and count accuracy (the ground-truth judge), the full-prompt standard error, and the paired
  standard error of each difference to the base row and to the prompt-tuning row (the same captions
  and seeds, so the per-caption difference's spread is the noise); FID against renders;
* the CFG sweep (2 / 4 / 7 by default) on the first ``--sweep-n`` captions: do the tokens move the
  CFG curve?
* FlowEdit on held-out edit pairs at the editor presets (n_max 20, src CFG 2) and ``--tar-cfg``:
  edit success and preservation.

    python benchmarks/shapes_web.py --web-model DIR --web-tokens softrepa=A prompt_tuning=B softrepa_no_denoise=C \\
        --clean-tokens softrepa=D prompt_tuning=E softrepa_no_denoise=F
    python benchmarks/shapes_web.py --quick ...   # 64 captions, sweep on 32, 16 edit pairs

Each method's results go to ``OUT/<base>-<method>.json`` with their settings (model, token file,
sizes); a later run with the same settings reads them back instead of recomputing, so the
command is resumable and ``--bases clean`` can evaluate one base while the other's tokens train.

Ends with ``RESULT web_base_full=.. web_prompt_tuning_full=.. web_softrepa_full=.. web_softrepa_fid=..
web_base_fid=.. clean_softrepa_full=.. clean_base_full=.. n=.. sweep_n=.. edits=..``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.fid import fid_of_images
from shapes.classifier import load_classifier, predict_scenes
from shapes.judge import edit_summary, score_predictions
from shapes.statements import check
from shapes.world import generate_samples, make_edit_pairs
from softrepa.atomic import atomic_write_bytes
from softrepa.generate import generate_images
from softrepa.models import KINDS, load_pipeline
from softrepa.runtime import resolve_device
from softrepa.tokens import load_tokens

KIND = "shapes-sd3"  # the bundled model's kind; the web base is the same architecture

BASES = ("web", "clean")


def _named_paths(items: list[str]) -> dict[str, str]:
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {item!r}")
        named[name] = path
    return named


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--web-model", required=True, help="diffusers folder of the web-pretrained base")
    parser.add_argument("--web-tokens", nargs="*", default=[], help="NAME=PATH token files for the web base")
    parser.add_argument("--clean-model", default=KINDS[KIND].hub_id, help="the clean base (default: bundled)")
    parser.add_argument("--clean-tokens", nargs="*", default=[], help="NAME=PATH token files for the clean base")
    parser.add_argument("--n", type=int, default=500, help="held-out captions (and seeds) at --cfg")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sweep-cfgs", type=float, nargs="*", default=[2.0, 7.0], help="besides --cfg")
    parser.add_argument("--sweep-n", type=int, default=None, help="captions of the CFG sweep (default: --n)")
    parser.add_argument("--edits", type=int, default=48, help="held-out edit pairs")
    parser.add_argument("--tar-cfg", type=float, default=7.5, help="FlowEdit target CFG (the presets')")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out captions and edit pairs")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--no-fid", action="store_true")
    parser.add_argument("--out", default="runs/shapes_web", help="results.json goes here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bases", nargs="*", choices=BASES, default=list(BASES),
                        help="base models to evaluate now (methods already stored with the same settings are "
                             "read back); the others are only read from OUT/<base>-<method>.json "
                             "(--bases alone only reads and prints)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="evaluate only these methods now (base or token names; default: all), e.g. in "
                             "parallel processes; the others are only read back")
    parser.add_argument("--quick", action="store_true", help="64 captions, sweep on 32, 16 edit pairs")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.sweep_n, args.edits = 64, 32, 16
    args.sweep_n = min(args.sweep_n or args.n, args.n)
    args.web_tokens, args.clean_tokens = _named_paths(args.web_tokens), _named_paths(args.clean_tokens)
    return args


def judge_images(images, samples, classifier) -> dict:
    """Aggregate scores (shapes.judge) and each image's full-prompt outcome (1/0)."""
    scenes = predict_scenes(classifier, images)
    full = [int(check(s["statements"], scene).all_hold) for scene, s in zip(scenes, samples, strict=True)]
    return {**score_predictions(scenes, samples), "full": full}


def standard_error(values: list[float]) -> float:
    """Standard error of a mean (of 0/1 outcomes, or of paired differences)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def text_to_image(pipe, tokens, samples, renders, classifier, args) -> dict:
    """One method at --cfg (scores, FID) and the CFG sweep on the first --sweep-n captions."""
    prompts, seeds = [s["caption"] for s in samples], list(range(len(samples)))
    entry = {}
    for cfg in [args.cfg, *args.sweep_cfgs]:
        n = len(samples) if cfg == args.cfg else args.sweep_n
        start = time.perf_counter()
        images = generate_images(pipe, prompts[:n], seeds[:n], tokens=tokens, kind=KIND, cfg=cfg,
                                 batch_size=args.batch_size, progress=False)
        judged = judge_images(images, samples[:n], classifier)
        judged["seconds"] = time.perf_counter() - start
        if cfg == args.cfg and not args.no_fid:
            judged["fid"] = fid_of_images(images, renders)
        entry[f"cfg{cfg:g}"] = judged
    return entry


def editing(pipe, tokens, pairs, classifier, args) -> dict:
    """FlowEdit at the preset (n_max 20, src CFG 2) with --tar-cfg, tokens on when given."""
    from editing.editor import FlowEditor
    from editing.presets import default_preset_name, get_preset

    params = get_preset(default_preset_name(KIND, tokens is not None)).params.replace(tar_cfg=args.tar_cfg)
    editor = FlowEditor(pipe, tokens=tokens, max_sequence_length=KINDS[KIND].max_sequence_length, max_side=64)
    try:
        edited = [editor.edit(p["source_image"], p["source_prompt"], p["target_prompt"], params,
                              use_tokens=tokens is not None).image
                  for p in tqdm(pairs, desc="edit", leave=False)]
    finally:
        editor.close()
    return edit_summary(edited, pairs, classifier)


def method_settings(model: str, token_file: str | None, args) -> dict:
    """What one method's results depend on: stored results are reused only under the same settings."""
    keys = ("n", "cfg", "sweep_cfgs", "sweep_n", "edits", "tar_cfg", "seed", "no_fid")
    return json.loads(json.dumps({"model": str(model), "tokens": token_file, **{k: getattr(args, k) for k in keys}}))


def stored(path: Path, settings: dict) -> dict | None:
    """A method's stored results if ``path`` holds them for the same settings."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data["results"] if data["settings"] == settings else None


def evaluate_base(base: str, model: str, token_files: dict[str, str], samples, pairs, classifier, args,
                  compute: bool = True) -> dict:
    """Every method (base, then each token file) of one base model. Each method's results are
    stored in OUT/<base>-<method>.json with their settings and reused by a later run with the same
    settings; ``compute`` False only reads stored ones."""
    pipe, results = None, {}
    for method, path in [("base", None), *token_files.items()]:
        file, settings = Path(args.out) / f"{base}-{method}.json", method_settings(model, path, args)
        results[method] = stored(file, settings)
        if results[method] is not None or not compute or (args.methods and method not in args.methods):
            print(f"{base} {method}: {'read from ' + str(file) if results[method] else 'not stored'}")
            continue
        if pipe is None:
            pipe = load_pipeline(model, KIND, device=resolve_device(args.device))
            pipe.set_progress_bar_config(disable=True)
        tokens = load_tokens(path, model=pipe) if path else None
        results[method] = text_to_image(pipe, tokens, samples, [s["image"] for s in samples], classifier, args)
        if args.edits:
            results[method]["edit"] = editing(pipe, tokens, pairs, classifier, args)
        atomic_write_bytes(file, json.dumps({"settings": settings, "results": results[method]}).encode())
        main = results[method][f"cfg{args.cfg:g}"]
        print(f"{base} {method}: full-prompt {main['overall']['full_prompt_acc']:.3f}", flush=True)
    return {method: entry for method, entry in results.items() if entry is not None}


def table(name: str, results: dict, args) -> list[str]:
    """The markdown table of one base model's methods."""
    key = f"cfg{args.cfg:g}"
    sweep = [f"cfg{c:g}" for c in args.sweep_cfgs]
    lines = [f"\n{name} base ({args.n} captions at CFG {args.cfg:g}; sweep on {args.sweep_n}; {args.edits} edit pairs)",
             "| method | attribute | count | full-prompt ± se | vs base ± se | vs prompt tuning ± se | FID | "
             + " | ".join(f"full @ CFG {c:g}" for c in args.sweep_cfgs) + f" | full @ CFG {args.cfg:g} (sweep n) "
             "| edit success | preservation |",
             "|---" * (10 + len(sweep)) + "|"]
    for method, entry in results.items():
        main, o = entry[key], entry[key]["overall"]
        diffs = []
        for other in ("base", "prompt_tuning"):
            if other in results and other != method:
                d = np.subtract(main["full"], results[other][key]["full"])
                diffs.append(f"{d.mean():+.3f} ± {standard_error(list(d)):.3f}")
            else:
                diffs.append("-")
        fid = f"{main['fid']:.2f}" if "fid" in main else "-"
        count = f"{o['count_acc']:.3f}" if o["count_acc"] is not None else "-"
        swept = [f"{entry[k]['overall']['full_prompt_acc']:.3f}" for k in sweep]
        same_n = f"{np.mean(main['full'][:args.sweep_n]):.3f}"
        edit = entry.get("edit", {})
        edits = [f"{edit[k]:.3f}" if k in edit else "-" for k in ("success", "preservation")]
        lines.append(f"| {method} | {o['attribute_acc']:.3f} | {count} | {o['full_prompt_acc']:.3f} ± "
                     f"{standard_error(main['full']):.3f} | {diffs[0]} | {diffs[1]} | {fid} | "
                     + " | ".join(swept) + f" | {same_n} | " + " | ".join(edits) + " |")
    return lines


def result_line(results: dict, args) -> str:
    key = f"cfg{args.cfg:g}"

    def value(base: str, method: str, metric: str = "full") -> str:
        entry = results.get(base, {}).get(method, {}).get(key)
        if entry is None or (metric == "fid" and "fid" not in entry):
            return "nan"
        return f"{entry['fid']:.2f}" if metric == "fid" else f"{entry['overall']['full_prompt_acc']:.3f}"

    return (f"RESULT web_base_full={value('web', 'base')} web_prompt_tuning_full={value('web', 'prompt_tuning')} "
            f"web_softrepa_full={value('web', 'softrepa')} web_softrepa_fid={value('web', 'softrepa', 'fid')} "
            f"web_base_fid={value('web', 'base', 'fid')} clean_softrepa_full={value('clean', 'softrepa')} "
            f"clean_base_full={value('clean', 'base')} n={args.n} sweep_n={args.sweep_n} edits={args.edits}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = generate_samples(args.n, seed=args.seed, split="val")
    pairs = make_edit_pairs(args.edits, seed=args.seed) if args.edits else []
    classifier = load_classifier()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    models = {"web": (args.web_model, args.web_tokens), "clean": (args.clean_model, args.clean_tokens)}
    results = {base: evaluate_base(base, model, tokens, samples, pairs, classifier, args, base in args.bases)
               for base, (model, tokens) in models.items()}
    for base, entries in results.items():
        if entries:
            print("\n".join(table(base, entries, args)))
    print(result_line(results, args))
    return results


if __name__ == "__main__":
    main()
