"""Editing evaluation (paper Tab. 2, 5, 6 and Fig. 5): FlowEdit on SD3, vanilla vs soft tokens.

For every editing pair (data_prep JSONL: DIV2K, or Cat2Dog from its ``--preset cat2dog``) and every
configuration of the sweep — method (vanilla / tokens) x n_max x target CFG — one edit through
``editing.editor.FlowEditor``. Scores, per configuration:

* CLIP score, ImageReward, PickScore, HPS: the edited image against the *target* prompt;
* LPIPS: the edited image against the source image (the prepared source: resized and cropped to
  the model's grid exactly as the editor fed it, so both have the same size);
* FID: the configuration's edited images against the prepared source images.

The default sweep is the paper's (Tab. 5): vanilla n_max 33 with target CFG 13.5 / 16.5 / 19.5,
tokens n_max 30 with 9 / 11 / 13 (Tab. 6 adds 7), all with ``guidance="authors"``: the CFGs of the
paper are in the authors' target guidance ``c + w (c - u)`` (standard guidance at w + 1; see
``editing/flowedit.py``). ``--guidance standard`` runs the usual convention instead.

Pairs are edited source by source, all configurations of a source in a row, so the editor's
caches (source latents, source-branch velocities) are reused across target CFGs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editing.flowedit import FlowEditParams
from evaluation.datasets import EditPair, load_edit_pairs
from evaluation.runner import MetricSettings, Task, free_memory, write_edit_plot
from softrepa.images import write_png
from softrepa.models import load_pipeline

METHODS = ("vanilla", "tokens")


@dataclass
class EditConfig:
    """Settings of an editing evaluation (defaults: the paper's DIV2K sweep, Tab. 5).

    out: the run folder. pairs: data_prep JSONL. dataset: label for the tables ("DIV2K",
    "Cat2Dog": also picks the paper's rows shown beside ours). model: SD3 pipeline id or folder.
    tokens: soft-token file (without it only the vanilla configurations run). n: first n pairs
    (None: all). flowedit: the FlowEdit settings every configuration shares (steps, src CFG, n_min,
    n_avg, seed, guidance, token branches); each configuration replaces its n_max and tar_cfg.
    max_side: the editor's longest image side.
    """

    out: Path
    pairs: Path
    dataset: str = "DIV2K"
    model: str = "stabilityai/stable-diffusion-3-medium-diffusers"
    tokens: Path | None = None
    n: int | None = None
    vanilla_n_max: tuple[int, ...] = (33,)
    vanilla_cfgs: tuple[float, ...] = (13.5, 16.5, 19.5)
    tokens_n_max: tuple[int, ...] = (30,)
    tokens_cfgs: tuple[float, ...] = (9.0, 11.0, 13.0)
    flowedit: FlowEditParams = field(default_factory=lambda: FlowEditParams(guidance="authors"))
    max_side: int = 1024
    metrics: MetricSettings = field(default_factory=MetricSettings)
    progress: bool = True


def group_name(method: str, n_max: int, tar_cfg: float) -> str:
    return f"{method}-nmax{n_max}-cfg{tar_cfg:g}"


class EditTask(Task):
    name = "edit"

    def __init__(self, config: EditConfig):
        # the data is read before the base class hashes the token file
        self.pairs: list[EditPair] = load_edit_pairs(config.pairs, config.n)
        super().__init__(config)
        # every sweep's parameters, checked once here: a bad n_max fails before the model loads
        self._params = {group["name"]: dataclasses.replace(config.flowedit, n_max=group["n_max"],
                                                           tar_cfg=group["tar_cfg"])
                        for group in self.groups()}
        for params in self._params.values():
            params.check()

    def groups(self) -> list[dict]:
        sweeps = {"vanilla": (self.config.vanilla_n_max, self.config.vanilla_cfgs),
                  "tokens": (self.config.tokens_n_max, self.config.tokens_cfgs)}
        methods = METHODS if self.config.tokens else ("vanilla",)
        return [{"name": group_name(method, n_max, cfg), "method": method, "n_max": int(n_max), "tar_cfg": float(cfg),
                 "reference_set": "source"}
                for method in methods for n_max in sweeps[method][0] for cfg in sweeps[method][1]]

    @staticmethod
    def source_path(pair: EditPair) -> str:
        return f"images/source/{pair.index:05d}.png"

    def items(self) -> list[dict]:
        return [{"key": f"{group['name']}/{pair.index:05d}", "group": group["name"], "index": pair.index,
                 "name": pair.name, "original": pair.image, "source_prompt": pair.source_prompt,
                 "prompt": pair.target_prompt, "image": f"images/{group['name']}/{pair.index:05d}.png",
                 "reference": str(self.run_dir / self.source_path(pair)), "seed": self.config.flowedit.seed}
                for pair in self.pairs for group in self.groups()]

    def params(self, group: dict) -> FlowEditParams:
        return self._params[group["name"]]

    def generation_settings(self) -> dict:
        c, f = self.config, self.config.flowedit
        return {"model": str(c.model), "kind": "sd3", "steps": f.steps, "src_cfg": f.src_cfg, "n_min": f.n_min,
                "n_avg": f.n_avg, "seed": f.seed, "guidance": f.guidance, "token_branches": f.token_branches,
                "max_side": c.max_side, "tokens_file": str(c.tokens) if c.tokens else None,
                "tokens_sha256": self.tokens_sha256}

    def summary_extra(self) -> dict:
        return {"kind": "sd3", "dataset": self.config.dataset}

    def notes(self) -> list[str]:
        f = self.config.flowedit
        notes = [f"{len(self.pairs)} pairs from {self.config.pairs}; FlowEdit T={f.steps}, "
                 f"src CFG {f.src_cfg:g}, seed {f.seed}, guidance '{f.guidance}'"
                 + (" (target c + w (c - u): the paper's convention)" if f.guidance == "authors" else "")]
        if not self.config.tokens:
            notes.append("no --tokens given: only the vanilla configurations ran")
        return notes

    def is_made(self, item: dict) -> bool:
        return (self.run_dir / item["image"]).is_file() and Path(item["reference"]).is_file()

    def work_units(self, items: list[dict]) -> list[list[dict]]:
        by_pair: dict[int, list[dict]] = {}
        for item in items:
            by_pair.setdefault(item["index"], []).append(item)
        return list(by_pair.values())

    def fid_reference(self, items, group):
        return [item["reference"] for item in items]

    def produce(self, items: list[dict], device: torch.device, dtype: torch.dtype) -> None:
        from editing.editor import FlowEditor  # one call site: FlowEditor(...).edit(...)

        pipe = load_pipeline(str(self.config.model), "sd3", dtype, device, progress_bar=False)
        editor = FlowEditor(pipe, tokens=self.config.tokens, max_side=self.config.max_side,
                            model_name=str(self.config.model))
        groups = {group["name"]: group for group in self.groups()}
        pairs = {pair.index: pair for pair in self.pairs}
        try:
            with tqdm(total=len(items), desc="editing", disable=not self.progress) as bar:
                for pair_items in self.work_units(items):  # a source's edits in a row: the editor's caches hit
                    pair = pairs[pair_items[0]["index"]]
                    prepared = editor.prepare(pair.image)
                    source_file = self.run_dir / self.source_path(pair)
                    if not source_file.is_file():
                        write_png(prepared.image, source_file)
                    for item in pair_items:
                        if (self.run_dir / item["image"]).is_file():  # only its source was missing
                            bar.update(1)
                            continue
                        group = groups[item["group"]]
                        result = editor.edit(prepared, pair.source_prompt, pair.target_prompt, self.params(group),
                                             use_tokens=group["method"] == "tokens")
                        result.save(self.run_dir / item["image"], extra={"evaluation_key": item["key"]})
                        bar.update(1)
        finally:
            editor.close()
            del editor, pipe
            free_memory()

    def after_summary(self, summary: dict, rows: list[dict]) -> None:
        path = write_edit_plot(rows, self.run_dir / "clip_vs_lpips.png", self.config.dataset)
        if path is None:
            summary["notes"].append("Fig. 5 plot not drawn: it needs both CLIP and LPIPS")
