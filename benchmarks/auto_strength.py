"""Auto strength on held-out shapes edit pairs: the preset, the automatic pick of a sweep, and the
oracle (the judge picks the best candidate of the same sweep: the ceiling any rule could reach).

Each pair is edited (bundled model, its soft tokens on, the preset's seed) three ways:

* preset: one edit at the kind's preset (``shapes-tokens``: T 28, n_max 20, tar 7.5);
* auto: ``editing.auto.edit_auto`` with the default sweep (four strengths, n_max 14 / 17 / 20 / 24)
  scored by the shapes scorer (``assets/shapes-scorer``: a CLIP trained on its own shapes images,
  never the judge's classifier) and picked by the rule;
* auto+tokens: the same strengths with tokens off and on (8 candidates), which says per image
  whether the tokens won;
* oracle: of the auto sweep's candidates, the judge's best (success, then preservation, then the
  smaller strength).

Judged by the shapes classifier (``shapes.judge.edit_outcomes``): success (the changed attribute reads
as its target), preservation (share of the other cells unchanged), PSNR outside the edited cell
(pooled, as in local_edits.py). cost_ratio: the seconds of the auto sweep (edit and scoring) over
those of the preset edit, per pair, median; the source-velocity cache is off so no case reuses
another's work. scorer_judge_agreement: over every two candidates of one pair that the judge tells
apart (one succeeds, one not), the share the scorer's alignment orders the same way.

``--tune`` chooses the rule's margin on *other* pairs (``--tune-seed``), never the held-out ones.

    python benchmarks/auto_strength.py --threads 1            # 96 held-out pairs
    python benchmarks/auto_strength.py --threads 1 --quick    # 24 pairs, a few minutes
    python benchmarks/auto_strength.py --threads 1 --tune     # the margin, on tuning pairs

Ends with ``RESULT success_preset=.. success_auto=.. success_oracle=.. preserve_preset=.. preserve_auto=..
cost_ratio=.. scorer_judge_agreement=.. tokens_won=.. n=..``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from editing.auto import DEFAULT_MARGIN, Sweep, edit_auto, pick
from editing.editor import FlowEditor
from editing.presets import default_preset_name, get_preset
from editing.scoring import EditScorer
from shapes.judge import edit_outcomes, load_classifier
from shapes.world import make_edit_pairs, pooled_psnr
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.runtime import add_threads_arg, apply_threads, resolve_device


KIND = "shapes-sd3"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOKENS = REPO / "assets" / "shapes-sd3-softrepa.safetensors"
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 1e9)  # 1e9: every candidate eligible, the most preserving wins


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=KINDS[KIND].hub_id)
    parser.add_argument("--tokens", default=str(DEFAULT_TOKENS), help="token file")
    parser.add_argument("--scorer", default=KINDS[KIND].scorer, help="CLIP folder that scores the candidates")
    parser.add_argument("--edits", type=int, default=96, help="held-out edit pairs")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out edit pairs")
    parser.add_argument("--tune", action="store_true", help="choose the rule's margin on tuning pairs instead")
    parser.add_argument("--tune-seed", type=int, default=99, help="seed of the tuning pairs (not the held-out ones)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--quick", action="store_true", help="24 pairs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/auto_strength", help="results.json goes here")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.edits = 24
    return args


def judge_best(outcomes: list[dict], strengths: list[int]) -> int:
    """The oracle: the judge's best candidate (success, then preservation, then the smaller strength)."""
    return min(range(len(outcomes)), key=lambda c: (-outcomes[c]["success"], -outcomes[c]["preservation"],
                                                    strengths[c], c))


def agreement(alignments: list[float], successes: list[bool]) -> tuple[int, int]:
    """(pairs of candidates the scorer orders as the judge does, pairs the judge tells apart)."""
    agree = total = 0
    for a in range(len(alignments)):
        for b in range(len(alignments)):
            if successes[a] and not successes[b]:
                total += 1
                agree += alignments[a] > alignments[b]
    return agree, total


def run_pair(editor, scorer, classifier, pair, params, margin: float) -> dict:
    """Preset, auto (timed, one tokens state), auto+tokens: the judge's outcomes of each candidate."""
    source = pair["source_image"], pair["source_prompt"], pair["target_prompt"]
    start = time.perf_counter()
    preset = editor.edit(*source, params, use_tokens=True)
    preset_s = time.perf_counter() - start
    start = time.perf_counter()
    auto = edit_auto(editor, *source, scorer, params, use_tokens=True, sweep=Sweep(margin=margin))
    auto_s = time.perf_counter() - start
    both = edit_auto(editor, *source, scorer, params, sweep=Sweep(tokens=(False, True), margin=margin))
    row = {"preset": edit_outcomes([preset.image], [pair], classifier)[0], "preset_image": preset.image,
           "cost": auto_s / preset_s}
    for name, result in (("auto", auto), ("both", both)):
        row[name] = {"outcomes": edit_outcomes([c.image for c in result.candidates], [pair] * len(result.candidates),
                                               classifier),
                     "alignment": result.alignment, "preservation": result.preservation,
                     "strengths": [c.params.n_max for c in result.candidates],
                     "tokens": [c.use_tokens for c in result.candidates], "picked": result.picked,
                     "images": [c.image for c in result.candidates]}
    return row


def summarize(rows: list[dict], pairs: list[dict], margin: float) -> dict:
    """The figures of the table and the RESULT line (the pick recomputed at ``margin``)."""
    resolution = KINDS[KIND].resolution
    out = {"preset": {"success": np.mean([r["preset"]["success"] for r in rows]),
                      "preservation": np.mean([r["preset"]["preservation"] for r in rows]),
                      "psnr_out": pooled_psnr([r["preset_image"] for r in rows], pairs, resolution)}}
    agree = total = 0
    for name in ("auto", "both"):
        for mode in ("rule", "oracle"):
            chosen = []
            for r in rows:
                sweep = r[name]
                c = pick(sweep["alignment"], sweep["preservation"], sweep["strengths"], margin) if mode == "rule" \
                    else judge_best(sweep["outcomes"], sweep["strengths"])
                chosen.append((sweep["outcomes"][c], sweep["images"][c], sweep["tokens"][c], sweep["strengths"][c]))
            out[f"{name}/{mode}"] = {"success": np.mean([o["success"] for o, *_ in chosen]),
                                     "preservation": np.mean([o["preservation"] for o, *_ in chosen]),
                                     "psnr_out": pooled_psnr([image for _, image, *_ in chosen], pairs, resolution),
                                     "tokens_on": np.mean([t for *_, t, _ in chosen]),
                                     "mean_n_max": np.mean([s for *_, s in chosen])}
    for r in rows:
        a, t = agreement(r["auto"]["alignment"], [o["success"] for o in r["auto"]["outcomes"]])
        agree, total = agree + a, total + t
    out["agreement"] = agree / max(1, total)
    out["cost_ratio"] = statistics.median(r["cost"] for r in rows)
    return out


def print_table(summary: dict, name: str, n: int) -> None:
    print(f"\nmodel: {name}; {n} held-out edit pairs; tokens on unless the row says otherwise")
    print("| method | success | preservation | PSNR outside (dB) | tokens on | mean n_max |")
    print("|---|---|---|---|---|---|")
    labels = {"preset": "preset (n_max 20)", "auto/rule": "auto (4 strengths)", "auto/oracle": "oracle (4 strengths)",
              "both/rule": "auto (4 strengths x tokens off/on)", "both/oracle": "oracle (4 strengths x tokens off/on)"}
    for key, label in labels.items():
        row = summary[key]
        print(f"| {label} | {row['success']:.3f} | {row['preservation']:.3f} | {row['psnr_out']:.2f} | "
              f"{row.get('tokens_on', 1.0):.2f} | {row.get('mean_n_max', 20):.1f} |")


def tune(rows: list[dict], pairs: list[dict]) -> list[dict]:
    """Success and preservation of the rule at each margin in MARGINS (tuning pairs)."""
    table = []
    for margin in MARGINS:
        s = summarize(rows, pairs, margin)
        table.append({"margin": margin, "success": s["auto/rule"]["success"],
                      "preservation": s["auto/rule"]["preservation"], "success_both": s["both/rule"]["success"],
                      "preservation_both": s["both/rule"]["preservation"]})
    return table


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    pipe = load_pipeline(args.model, KIND, device=resolve_device(args.device), progress_bar=False)
    # no velocity cache: the sweeps must not reuse each other's source velocities (a cost measure)
    editor = FlowEditor(pipe, tokens=args.tokens, kind=KIND, cache_source_velocities=False)
    scorer = EditScorer(args.scorer, device=args.device)
    classifier = load_classifier()
    params = get_preset(default_preset_name(KIND, True)).params
    pairs = make_edit_pairs(args.edits, seed=args.tune_seed if args.tune else args.seed)
    rows = [run_pair(editor, scorer, classifier, pair, params, args.margin)
            for pair in tqdm(pairs, desc="pairs", leave=False)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = model_label(args.model)
    if args.tune:
        table = tune(rows, pairs)
        s = summarize(rows, pairs, args.margin)
        print(f"\ntuning pairs: preset success {s['preset']['success']:.3f} preservation "
              f"{s['preset']['preservation']:.3f}; oracle {s['auto/oracle']['success']:.3f} / "
              f"{s['auto/oracle']['preservation']:.3f}")
        print(f"\nthe rule's margin on {len(pairs)} tuning pairs (seed {args.tune_seed}):")
        print("| margin | success | preservation | success (x tokens) | preservation (x tokens) |\n|---|---|---|---|---|")
        for row in table:
            print(f"| {row['margin']:g} | {row['success']:.3f} | {row['preservation']:.3f} | {row['success_both']:.3f} "
                  f"| {row['preservation_both']:.3f} |")
        (out / "tune.json").write_text(json.dumps(table, indent=1))
        return {"tune": table}
    s = summarize(rows, pairs, args.margin)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "summary": s}, indent=1, default=float))
    print_table(s, name, len(pairs))
    print(f"RESULT success_preset={s['preset']['success']:.3f} success_auto={s['auto/rule']['success']:.3f} "
          f"success_oracle={s['auto/oracle']['success']:.3f} preserve_preset={s['preset']['preservation']:.3f} "
          f"preserve_auto={s['auto/rule']['preservation']:.3f} cost_ratio={s['cost_ratio']:.2f} "
          f"scorer_judge_agreement={s['agreement']:.3f} tokens_won={s['both/rule']['tokens_on']:.3f} n={len(pairs)}")
    return s


if __name__ == "__main__":
    main()
