"""Editing evaluation (paper Tab. 2, 5, 6 and Fig. 5): FlowEdit on SD3, vanilla vs soft tokens.

For every editing pair (data_prep JSONL: DIV2K, or Cat2Dog from its ``--preset cat2dog``) and every
configuration of the sweep — method (vanilla / tokens) x n_max x target CFG — one edit through
``editing.editor.FlowEditor``. Scores, per configuration:

* CLIP score, ImageReward, PickScore, HPS: the edited image against the *target* prompt;
* LPIPS: the edited image against the source image (the prepared source: resized and cropped to
  the model's grid exactly as the editor fed it, so both have the same size);
* FID: the configuration's edited images against the prepared source images;
* where the pairs carry a mask of the edited region (PIE-Bench, ``evaluation.pie_bench``): the
  region metrics of ``evaluation.region_metrics`` (structure distance; PSNR, LPIPS, MSE, SSIM of
  the unedited region; CLIP of the whole and of the edited region), with the dataset's mask, put
  through the editor's resize and crop (``region_mask``; PIE-Bench's one-pixel frame drawn after
  it), as the region. That holds whatever ``mask`` says: PIE-Bench scores every editor, masked
  or not, on its own masks.

``EditConfig.mask`` chooses what the editor is told: "none" (the whole image may change), "given"
(the dataset's masks: the edit is restricted to them) or "auto" (``editing.masks.AutoMask``: the
editor finds the region). A masked edit's mask is saved beside it as ``NNNNN.mask.png``
(``editing.editor.EditResult.save``).

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

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from editing.params import FlowEditParams
from editing.inputs import InputReport
from editing.masks import AutoMask, fit_mask
from evaluation.datasets import EditPair, RunLengthMask, load_edit_pairs
from evaluation.pie_bench import is_pie_bench, load_pie_bench
from evaluation.runner import MetricSettings, Task, free_memory, write_edit_plot
from softrepa.images import write_png
from softrepa.models import load_pipeline

METHODS = ("vanilla", "tokens")
MASK_MODES = ("none", "given", "auto")


@dataclass
class EditConfig:
    """Settings of an editing evaluation (defaults: the paper's DIV2K sweep, Tab. 5).

    out: the run folder. pairs: data_prep JSONL, or a PIE-Bench folder (holding mapping_file.json).
    dataset: label for the tables ("DIV2K", "Cat2Dog": also picks the paper's rows shown beside
    ours). model: SD3 pipeline id or folder.
    tokens: soft-token file (without it only the vanilla configurations run). n: first n pairs
    (None: all). flowedit: the FlowEdit settings every configuration shares (steps, src CFG, n_min,
    n_avg, seed, guidance, token branches); each configuration replaces its n_max and tar_cfg.
    max_side: the editor's longest image side. mask: what the editor is told of the region to
    change: "none", "given" (the dataset's masks) or "auto". editing_types: PIE-Bench's
    editing_type_id values to keep (None: all).
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
    mask: str = "none"
    editing_types: tuple[str, ...] | None = None
    metrics: MetricSettings = field(default_factory=MetricSettings)
    progress: bool = True


def group_name(method: str, n_max: int, tar_cfg: float) -> str:
    return f"{method}-nmax{n_max}-cfg{tar_cfg:g}"


def load_pairs(path: Path, n: int | None = None, editing_types: tuple[str, ...] | None = None) -> list[EditPair]:
    """PIE-Bench's pairs (with masks) when ``path`` is its folder or mapping file, else data_prep JSONL."""
    if is_pie_bench(path):
        return load_pie_bench(path, n, editing_types)
    if editing_types:
        raise ValueError(f"editing_types select PIE-Bench pairs, but {path} is not a PIE-Bench folder (no "
                         "mapping_file.json): drop --editing-types")
    return load_edit_pairs(path, n)


def _framed(mask: Image.Image) -> Image.Image:
    """The mask with its one-pixel frame set to 255 (PIE-Bench's frame, drawn at the evaluated size
    so a resize cannot thin it away)."""
    values = np.array(mask.convert("L"))
    values[0, :] = values[-1, :] = values[:, 0] = values[:, -1] = 255
    return Image.fromarray(values, mode="L")


def region_mask(mask: RunLengthMask, report: InputReport) -> Image.Image:
    """The dataset's mask of the edited region at the prepared image's size ("L", 255 = edited):
    through the editor's own resize and center crop (``editing.masks.fit_mask``), binary, with
    PIE-Bench's one-pixel frame drawn again at that size (a downscale would thin it away)."""
    fitted = fit_mask(mask.array(), report).image()
    return _framed(fitted) if mask.border else fitted


class EditTask(Task):
    name = "edit"

    def __init__(self, config: EditConfig):
        # the data is read before the base class hashes the token file
        if config.mask not in MASK_MODES:
            raise ValueError(f"EditConfig.mask must be one of {', '.join(MASK_MODES)}, got {config.mask!r}")
        self.pairs: list[EditPair] = load_pairs(Path(config.pairs), config.n, config.editing_types)
        without = sum(pair.mask is None for pair in self.pairs)
        if config.mask == "given" and without:
            raise ValueError(f"mask 'given' edits within the dataset's masks, but {without} of the {len(self.pairs)} "
                             f"pairs of {config.pairs} have none (PIE-Bench has them): use --mask none or --mask auto")
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

    @staticmethod
    def region_path(pair: EditPair) -> str:
        """The dataset's mask of the edited region at the prepared source's size (255 = edited)."""
        return f"images/masks/{pair.index:05d}.png"

    def items(self) -> list[dict]:
        items = []
        for pair in self.pairs:
            for group in self.groups():
                item = {"key": f"{group['name']}/{pair.index:05d}", "group": group["name"], "index": pair.index,
                        "name": pair.name, "original": pair.image, "source_prompt": pair.source_prompt,
                        "prompt": pair.target_prompt, "image": f"images/{group['name']}/{pair.index:05d}.png",
                        "reference": str(self.run_dir / self.source_path(pair)), "seed": self.config.flowedit.seed}
                if pair.mask is not None:  # only then: items of mask-less runs keep their content
                    item["region_mask"] = self.region_path(pair)
                if pair.editing_type:
                    item["editing_type"] = pair.editing_type
                items.append(item)
        return items

    def params(self, group: dict) -> FlowEditParams:
        return self._params[group["name"]]

    @property
    def model_kind(self) -> str:
        return "sd3"  # the paper's editing evaluation is on SD3 (Table 3)

    def generation_settings(self) -> dict:
        c, f = self.config, self.config.flowedit
        return {"model": str(c.model), "kind": self.model_kind, "steps": f.steps, "src_cfg": f.src_cfg, "n_min": f.n_min,
                "n_avg": f.n_avg, "seed": f.seed, "guidance": f.guidance, "token_branches": f.token_branches,
                "max_side": c.max_side, "tokens_file": str(c.tokens) if c.tokens else None,
                "tokens_sha256": self.tokens_sha256, **({"mask": c.mask} if c.mask != "none" else {})}

    def summary_extra(self) -> dict:
        return {"kind": self.model_kind, "dataset": self.config.dataset, "mask": self.config.mask}

    def notes(self) -> list[str]:
        f = self.config.flowedit
        notes = [f"{len(self.pairs)} pairs from {self.config.pairs}; FlowEdit T={f.steps}, "
                 f"src CFG {f.src_cfg:g}, seed {f.seed}, guidance '{f.guidance}'"
                 + (" (target c + w (c - u): the paper's convention)" if f.guidance == "authors" else "")]
        if not self.config.tokens:
            notes.append("no --tokens given: only the vanilla configurations ran")
        masked = sum(pair.mask is not None for pair in self.pairs)
        if masked:
            notes.append(f"region metrics on the dataset's masks of the edited region ({masked} pairs), PIE-Bench's "
                         "convention: PSNR / LPIPS / MSE / SSIM of both images times (1 - mask), CLIP (100 max(cos, "
                         "0)) of the whole edited image and of it times the mask, structure distance of the whole "
                         "images")
        notes.append({"none": "edits unmasked (--mask none): the whole image may change",
                      "given": "edits restricted to the dataset's masks (--mask given)",
                      "auto": "edits restricted to automatic masks (--mask auto; saved as "
                              "images/<group>/NNNNN.mask.png)"
                      }[self.config.mask])
        return notes

    def is_made(self, item: dict) -> bool:
        region = item.get("region_mask")
        return ((self.run_dir / item["image"]).is_file() and Path(item["reference"]).is_file()
                and (region is None or (self.run_dir / region).is_file()))

    def work_units(self, items: list[dict]) -> list[list[dict]]:
        by_pair: dict[int, list[dict]] = {}
        for item in items:
            by_pair.setdefault(item["index"], []).append(item)
        return list(by_pair.values())

    def fid_reference(self, items, group):
        return [item["reference"] for item in items]

    def produce(self, items: list[dict], device: torch.device, dtype: torch.dtype) -> None:
        from editing.editor import FlowEditor  # one call site: FlowEditor(...).edit(...)

        pipe = load_pipeline(str(self.config.model), self.model_kind, dtype, device, progress_bar=False)
        editor = FlowEditor(pipe, tokens=self.config.tokens, max_side=self.config.max_side,
                            model_name=str(self.config.model))
        groups = {group["name"]: group for group in self.groups()}
        pairs = {pair.index: pair for pair in self.pairs}
        try:
            with tqdm(total=len(items), desc="editing", disable=not self.progress) as bar:
                for pair_items in self.work_units(items):  # a source's edits in a row: the editor's caches hit
                    pair = pairs[pair_items[0]["index"]]
                    prepared = editor.prepare(pair.image)
                    self._write_inputs(pair, prepared)
                    mask_argument = self._mask_argument(pair)
                    for item in pair_items:
                        if (self.run_dir / item["image"]).is_file():  # only its source or mask was missing
                            bar.update(1)
                            continue
                        group = groups[item["group"]]
                        result = editor.edit(prepared, pair.source_prompt, pair.target_prompt, self.params(group),
                                             use_tokens=group["method"] == "tokens", **mask_argument)
                        result.save(self.run_dir / item["image"], extra={"evaluation_key": item["key"]})
                        bar.update(1)
        finally:
            editor.close()
            del editor, pipe
            free_memory()

    def _write_inputs(self, pair: EditPair, prepared) -> None:
        """Write the prepared source and, where the pair has one, its region mask fitted to it (the
        one the region metrics read), each once."""
        source_file = self.run_dir / self.source_path(pair)
        if not source_file.is_file():
            write_png(prepared.image, source_file)
        region_file = self.run_dir / self.region_path(pair)
        if pair.mask is not None and not region_file.is_file():
            write_png(region_mask(pair.mask, prepared.report), region_file)

    def _mask_argument(self, pair: EditPair) -> dict:
        """The ``mask=`` of ``FlowEditor.edit`` for this run's mask mode (none: not passed at all).
        "given" hands the editor the dataset's mask at the original image's size (the editor fits it
        as ``region_mask`` does), without PIE-Bench's one-pixel frame: the frame only keeps the
        border out of the unedited-region scores, it is not part of the edit."""
        if self.config.mask == "given":
            return {"mask": dataclasses.replace(pair.mask, border=False).image()}
        if self.config.mask == "auto":
            return {"mask": AutoMask()}
        return {}

    def after_summary(self, summary: dict, rows: list[dict]) -> None:
        path = write_edit_plot(rows, self.run_dir / "clip_vs_lpips.png", self.config.dataset)
        if path is None:
            summary["notes"].append("Fig. 5 plot not drawn: it needs both CLIP and LPIPS")
