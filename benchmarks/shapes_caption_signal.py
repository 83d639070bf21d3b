"""How much does the caption move the shapes model's denoising error? The signal SoftREPA trains on.

SoftREPA's loss (paper Eq. 9-14) rewards a lower error err(x_t, y) = mean((v(x_t, t, y) - (eps - x0))^2)
with the image's own caption y than with other captions. This script measures that error and its
gaps on held-out edit pairs (val split: each target prompt is the source image's caption with
exactly one attribute of one object changed), per timestep t, with the training code's own scorer
(``softrepa.pairs.PairScorer``), one noise draw per image:

    err_pos     the error with the image's own caption
    hard gap    err(one-attribute-changed caption) - err_pos        (a binding mistake)
    random gap  err(another pair's caption) - err_pos               (an unrelated caption)
    hard / random wins   fraction of images whose own caption has the strictly lower error

With ``--tokens`` the same images, t and noise run again with the tokens attached: did they widen
the gaps, and what did that cost in err_pos (the denoising the sampler relies on)?

    python benchmarks/shapes_caption_signal.py
    python benchmarks/shapes_caption_signal.py --tokens assets/shapes-sd3-softrepa.safetensors

Prints one table row per t (and method); ends with
``RESULT base_err_pos=.. base_hard_gap=.. base_hard_wins=.. [tokens_err_pos=.. tokens_hard_gap=.. tokens_hard_wins=..]
model=<shapes-sd3 | --model> tokens=<token file name | none> pairs=<n>`` (means over the timesteps).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent

from shapes.model import to_unit
from shapes.world import make_edit_pairs
from softrepa.cache import encode_latents, encode_prompts
from softrepa.cli_types import int_at_least
from softrepa.hooks import attach_tokens
from softrepa.loss import DiffusionObjective
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.pairs import NoiseDraw, PairBatch, PairScorer
from softrepa.tokens import load_tokens

KIND = "shapes-sd3"
DEFAULT_TIMESTEPS = (50, 150, 300, 450, 600, 750, 900, 980)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=KINDS[KIND].hub_id)
    parser.add_argument("--tokens", default=None, help="soft-token file to compare with the base model")
    parser.add_argument("--pairs", type=int_at_least(2), default=96, help="held-out edit pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and the noise")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS),
                        help="t on the 0..1000 training scale")
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--threads", type=int_at_least(1), default=2)
    args = parser.parse_args(argv)
    bad = [t for t in args.timesteps if not 0 <= t < 1000]
    if bad:
        parser.error(f"--timesteps must lie in [0, 999], got {bad}")
    return args


@torch.no_grad()
def caption_errors(pipe, x0: torch.Tensor, texts: list[dict[str, torch.Tensor]], timestep: int,
                   eps: torch.Tensor, batch_size: int) -> torch.Tensor:
    """err of every image i with caption i of each text set: (len(texts), N)."""
    objective = DiffusionObjective("flow")
    n = x0.shape[0]
    rows = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        b = stop - start
        text = {key: torch.cat([t[key][start:stop] for t in texts]) for key in texts[0]}  # (len(texts) * b, ...)
        noise = NoiseDraw(timesteps=torch.full((b,), timestep), eps=eps[start:stop])
        scorer = PairScorer(pipe.transformer, "mmdit", objective, PairBatch(latents=x0[start:stop], text=text), noise)
        # image i against column k * b + i: its caption in text set k
        pairs = torch.tensor([[i * len(texts) * b + k * b + i for i in range(b)] for k in range(len(texts))])
        rows.append(scorer.errors(pairs.flatten()).view(len(texts), b))
    return torch.cat(rows, dim=1)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, KIND, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    pairs = make_edit_pairs(args.pairs, seed=args.seed)
    renders = np.stack([np.asarray(p["source_image"].convert("RGB")) for p in pairs])  # (N, H, W, 3) uint8
    x0 = encode_latents(pipe.vae, to_unit(torch.from_numpy(renders).permute(0, 3, 1, 2)))  # (N, C, h, w)
    length = KINDS[KIND].max_sequence_length  # the T5 length the model was trained with
    own = encode_prompts(pipe, [p["source_prompt"] for p in pairs], "cpu", max_sequence_length=length)
    hard = encode_prompts(pipe, [p["target_prompt"] for p in pairs], "cpu", max_sequence_length=length)
    shifted = torch.roll(torch.arange(len(pairs)), 1)  # another pair's caption for each image
    unrelated = {key: value[shifted] for key, value in own.items()}
    generator = torch.Generator().manual_seed(args.seed)
    eps = {t: torch.randn(x0.shape, generator=generator) for t in args.timesteps}

    methods = {"base": None}
    if args.tokens:
        methods["tokens"] = attach_tokens(pipe, load_tokens(args.tokens, model=pipe), enabled=False)
    results: dict[str, list[dict]] = {}
    name, tokens_name = model_label(args.model), Path(args.tokens).name if args.tokens else "none"
    print(f"\nmodel: {name} ({args.model}); tokens: {tokens_name}; {len(pairs)} held-out edit pairs")
    print(f"| method ({name}) | t | err_pos | hard gap | random gap | hard wins | random wins |")
    print("|---|---|---|---|---|---|---|")
    for method, attached in methods.items():
        results[method] = []
        for t in tqdm(args.timesteps, desc=method, leave=False):
            with attached.switch(True) if attached is not None else contextlib.nullcontext():
                err = caption_errors(pipe, x0, [own, hard, unrelated], t, eps[t], args.batch_size)  # (3, N)
            pos, hard_gap, random_gap = err[0], err[1] - err[0], err[2] - err[0]
            row = {"t": t, "err_pos": pos.mean().item(), "hard_gap": hard_gap.mean().item(),
                   "random_gap": random_gap.mean().item(), "hard_wins": (hard_gap > 0).float().mean().item(),
                   "random_wins": (random_gap > 0).float().mean().item()}
            results[method].append(row)
            print(f"| {method} | {t} | {row['err_pos']:.4f} | {row['hard_gap']:.4f} | {row['random_gap']:.4f} | "
                  f"{row['hard_wins']:.2f} | {row['random_wins']:.2f} |", flush=True)
    summary = {f"{method}_{key}": float(np.mean([row[key] for row in rows]))
               for method, rows in results.items() for key in ("err_pos", "hard_gap", "hard_wins")}
    print("RESULT " + " ".join(f"{key}={value:.4f}" for key, value in summary.items())
          + f" model={name} tokens={''.join(tokens_name.split())} pairs={len(pairs)}")
    return {"rows": results, "summary": summary}


if __name__ == "__main__":
    main()
