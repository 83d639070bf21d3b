"""Text-to-image evaluation (paper Tab. 1 and 4): COCO val2017 prompts, with and without soft tokens.

The first caption of each of the first ``n`` COCO val2017 images (5,000 in the paper) is generated
once per method (vanilla; tokens when a token file is given) through ``softrepa.generate``, with
the model kind's paper settings (SD3: 28 steps, CFG 4.0, 1024 px; SD1.5 / SDXL: 30 steps, CFG 7.0)
unless overridden. Prompt i gets seed ``seed + i`` in both methods, so the two images of a prompt
differ only by the tokens.

Scores: ImageReward, PickScore, CLIP score, HPS against the prompt; FID of each method's images
against the same n COCO val images; LPIPS of each image against the COCO image of its caption.
The paper does not say what its T2I LPIPS compares; the authors' evaluation code compares each
generated image with its COCO image, both resized to 299 x 299, and so do we (with inputs in
[-1, 1], not their uint8 0..255). FID and LPIPS need ``--coco-images`` (the val2017 folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evaluation.datasets import CaptionItem, load_coco_captions
from evaluation.runner import MetricSettings, Task, free_memory
from softrepa.images import write_png
from softrepa.models import get_kind, load_pipeline
from softrepa.tokens import load_tokens

METHODS = ("vanilla", "tokens")
LPIPS_SIZE = (299, 299)  # the authors' T2I LPIPS geometry


@dataclass
class T2IConfig:
    """Settings of a text-to-image evaluation (defaults: the paper's SD3 row of Tab. 4).

    out: the run folder. captions: ``captions_val2017.json``. coco_images: the val2017 image folder
    (FID and LPIPS references; without it those two are skipped). model: pipeline id or folder
    (default: the kind's Hub id). kind: a key of ``softrepa.models.KINDS``. tokens: soft-token
    file (without it only the vanilla method runs). n: number of prompts (None: every image of the
    captions file, 5,000 for val2017). steps / cfg / resolution:
    None = the kind's defaults. seed: prompt i uses seed + i. batch_size: images per pipeline call.
    """

    out: Path
    captions: Path
    coco_images: Path | None = None
    model: str | None = None
    kind: str = "sd3"
    tokens: Path | None = None
    n: int | None = None
    steps: int | None = None
    cfg: float | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 4
    metrics: MetricSettings = field(default_factory=MetricSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        spec = get_kind(self.kind)
        self.model = self.model or spec.hub_id
        self.steps = self.steps if self.steps is not None else spec.steps
        self.cfg = self.cfg if self.cfg is not None else spec.cfg
        self.resolution = self.resolution if self.resolution is not None else spec.resolution
        if self.n is not None and self.n < 1:
            raise ValueError(f"--n must be at least 1, got {self.n}")


class T2ITask(Task):
    name = "t2i"

    def __init__(self, config: T2IConfig):
        # the data is read before the base class hashes the token file
        self.captions: list[CaptionItem] = load_coco_captions(config.captions, config.n)
        super().__init__(config)

    def methods(self) -> tuple[str, ...]:
        return METHODS if self.config.tokens else ("vanilla",)

    def groups(self) -> list[dict]:
        return [{"name": method, "method": method, "steps": self.config.steps, "cfg": self.config.cfg,
                 "resolution": self.config.resolution, "reference_set": "coco"} for method in self.methods()]

    def reference(self, caption: CaptionItem) -> str | None:
        if self.config.coco_images is None:
            return None
        return str(Path(self.config.coco_images) / caption.file_name)

    def items(self) -> list[dict]:
        return [{"key": f"{method}/{c.index:05d}", "group": method, "index": c.index, "image_id": c.image_id,
                 "prompt": c.caption, "seed": self.config.seed + c.index, "image": f"images/{method}/{c.index:05d}.png",
                 "reference": self.reference(c)}
                for method in self.methods() for c in self.captions]

    def generation_settings(self) -> dict:
        c = self.config
        return {"model": str(c.model), "kind": c.kind, "steps": c.steps, "cfg": c.cfg, "resolution": c.resolution,
                "seed_rule": f"prompt i: seed {c.seed} + i", "tokens_file": str(c.tokens) if c.tokens else None,
                "tokens_sha256": self.tokens_sha256}

    def summary_extra(self) -> dict:
        return {"kind": self.config.kind, "dataset": "COCO val2017"}

    def notes(self) -> list[str]:
        c = self.config
        notes = [f"{len(self.captions)} COCO val2017 prompts (first caption per image); {c.steps} steps, CFG {c.cfg:g}, "
                 f"{c.resolution} px, seed {c.seed} + i"]
        if not c.tokens:
            notes.append("no --tokens given: only the vanilla method ran")
        if c.coco_images is None:
            notes.append("no --coco-images given: FID and LPIPS (which compare with the COCO images) not computed")
        elif "lpips" in self.metrics.names:
            notes.append("LPIPS: each image against the COCO image of its caption, both at 299 x 299, inputs in [-1, 1]")
        return notes

    def pair_size(self) -> tuple[int, int]:
        return LPIPS_SIZE

    def fid_reference(self, items, group):
        references = [item["reference"] for item in items]
        return references if all(references) else None

    @property
    def model_kind(self) -> str:
        return self.config.kind

    def produce(self, items: list[dict], device: torch.device, dtype: torch.dtype) -> None:
        from softrepa.generate import PNG_KEY, PNG_LAYOUT, generate_images  # one call site: generate_images

        c = self.config
        kind = c.kind
        pipe = load_pipeline(str(c.model), kind, dtype, device, progress_bar=False)
        tokens = load_tokens(c.tokens, model=pipe) if c.tokens else None
        record = {"model": str(c.model), "kind": kind, "steps": c.steps, "cfg": c.cfg,
                  "tokens_sha256": self.tokens_sha256 or "none", "software": "softrepa-edit evaluate"}
        try:
            with tqdm(total=len(items), desc="generating", disable=not self.progress) as bar:
                for method in self.methods():
                    todo = [item for item in items if item["group"] == method]
                    for start in range(0, len(todo), c.batch_size):
                        chunk = todo[start:start + c.batch_size]
                        images = generate_images(pipe, [item["prompt"] for item in chunk],
                                                 [item["seed"] for item in chunk],
                                                 tokens if method == "tokens" else None, kind=kind, steps=c.steps,
                                                 cfg=c.cfg, height=c.resolution, width=c.resolution,
                                                 batch_size=c.batch_size)
                        for item, image in zip(chunk, images):
                            write_png(image, self.run_dir / item["image"],
                                      {**record, "method": method, "prompt": item["prompt"], "seed": item["seed"],
                                       "evaluation_key": item["key"]}, key=PNG_KEY, layout=PNG_LAYOUT)
                        bar.update(len(chunk))
        finally:
            del pipe, tokens
            free_memory()
