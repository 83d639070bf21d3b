"""Training checkpoints and resume: where a run is (``TrainState``), every random state of a
process, and the checkpoint folders that hold both.

    <output>/checkpoints/step-XXXXXXXX/
        tokens.safetensors   the soft tokens
        state.pt             optimizer, LR scheduler, grad scaler (``torch.load(weights_only=True)``)
        rng-<rank>.pt        torch / numpy / python / noise-generator states of each process
        trainer.json         format, TrainState, world size, config, time

Each is written into ``.tmp-step-XXXXXXXX/`` and then renamed, so a killed run leaves only
complete checkpoints; the newest ``keep`` are kept. Restoring all of it continues a run exactly:
the same batches, captions, t and eps as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softrepa.tokens import SoftTokens, save_tokens
from softrepa.train_config import TrainConfig

log = logging.getLogger("softrepa.train")  # the run's log: its messages keep the name users filter on

CHECKPOINT_FORMAT = 1


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint's trainer.json."""

    step: int = 0  # optimizer iterations done (skipped non-finite steps count: they used a batch)
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float | None = None
    nonfinite_in_row: int = 0


# ----------------------------------------------------------------------------- random states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(noise_generator: torch.Generator) -> dict[str, Any]:
    """Every random state of this process, as tensors and plain containers (weights-only loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "noise_generator": noise_generator.get_state(),
             "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
             "numpy_rest": [str(kind), int(pos), int(has_gauss), float(cached)],
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise_generator"])
    kind, pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- checkpoint folders


def checkpoint_dirs(output: Path) -> list[Path]:
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                   and (p / "trainer.json").is_file()), key=lambda p: p.name)


def find_checkpoint(output: Path, resume: str) -> Path | None:
    """'latest' -> the newest complete checkpoint (None if there is none); else the given folder."""
    if resume == "latest":
        found = checkpoint_dirs(output)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint there (expected {path / 'trainer.json'})")
    return path


def save_checkpoint(accelerator: Any, output: Path, state: TrainState, tokens: SoftTokens, optimizer, lr_scheduler,
                    scaler, noise_generator: torch.Generator, config: TrainConfig, keep: int) -> Path:
    """Write a checkpoint atomically: everything into a temp folder, then one rename."""
    root = output / "checkpoints"
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(noise_generator), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_tokens(tokens, tmp / "tokens.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "state.pt")
        meta = {"format": CHECKPOINT_FORMAT, "state": dataclasses.asdict(state),
                "world_size": accelerator.num_processes, "config": dataclasses.asdict(config), "time": time.time()}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():  # a re-run of the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator: Any, optimizer, lr_scheduler, scaler,
                    noise_generator: torch.Generator) -> TrainState:
    """Restore optimizer, scheduler, scaler and RNG states; returns the train state. Never unpickles
    arbitrary objects: ``weights_only=True`` accepts tensors and plain containers only."""
    meta = json.loads((path / "trainer.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')}, this version reads {CHECKPOINT_FORMAT}")
    if meta["world_size"] != accelerator.num_processes:
        log.warning("%s was written by %d processes, resuming on %d: data order and RNG streams differ from an "
                    "uninterrupted run", path, meta["world_size"], accelerator.num_processes)
    blobs = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blobs["optimizer"])
    lr_scheduler.load_state_dict(blobs["lr_scheduler"])
    if scaler is not None and blobs["scaler"] is not None:
        scaler.load_state_dict(blobs["scaler"])
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        rng_file = path / "rng-0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True), noise_generator)
    return TrainState(**meta["state"])
