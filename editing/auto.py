"""Auto strength: run a sweep of candidate edits in one batch, score each without the answer, pick one.

FlowEdit's result depends, image by image, on how many of the T steps edit (n_max) and on the
target guidance: too little and nothing changes, too much and the rest of the picture drifts.
The sweep runs the candidates

    c = (n_max, tar_cfg, seed, tokens)  for every combination of the ``Sweep``'s axes

(default: four strengths around the preset's n_max, ``DEFAULT_STRENGTH_FRACTIONS``; the preset's
guidance, seed and tokens state) as one batched run (``FlowEditor.edit_runs``). Noise is lined up
per seed: with M the largest n_max, a candidate of n_max m skips (M - m) n_avg draws
(``FlowEditParams.noise_offset``), so at every step its noise is the strongest candidate's and its
source velocity is the same: one source half of the batch per step (2 items) and one target half
per candidate (2 items each), about (2 M + 2 sum m) / (4 n_preset) of one edit at the preset.

Each candidate gets two scores from ``editing.scoring.EditScorer`` (not the judge; REFERENCE §11):

    alignment    a_c = 100 (<I(x_c), T(p_tar)> - <I(x_c), T(p_src)>)   reads more as the target than the source
    preservation p_c = 100 (1 - structure_distance_c)                  with DINO weights, else
                 p_c = 100 image_similarity_c                          (CLIP image cosine to the source)

(preservation inside the mask's box when there is a mask). The pick, "as much as needed, no more":

    eligible = {c : a_c >= max_c' a_c' - margin}
    pick     = argmax_{c in eligible} p_c     (ties: the smaller n_max, then the sweep's order)

Alignment is the difference of two CLIP similarities rather than the target similarity alone: a
small CLIP's absolute similarities shift with the picture's content, which both terms share, while
the edit moves only the difference. With tokens as an axis the result says whether the pick has them
(``AutoResult.tokens_won``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from PIL import Image

from editing.editor import EditResult, FlowEditor
from editing.masks import AutoMask, MaskLike, MaskOptions
from editing.params import FlowEditParams, ParameterError, shown
from editing.scoring import EditScorer, EditScores

DEFAULT_STRENGTH_FRACTIONS = (0.7, 0.85, 1.0, 1.2)  # of the preset's n_max: its useful range (editing/presets.py)
# alignment points (x 100 CLIP cosine) a pick may give up for preservation: chosen on 32 tuning pairs of the
# shapes world (benchmarks/auto_strength.py --tune, never the held-out pairs) as the smallest margin whose
# picks keep preservation within 0.02 of the preset's (margin 3: success 0.78, preservation 0.83; 3.5: 0.75,
# 0.865; preset 0.53, 0.885; docs/benchmarks.md, Auto strength)
DEFAULT_MARGIN = 3.5
MAX_CANDIDATES = 32  # one sweep's batch: each candidate is a full edit's latents and two items per step


@dataclass(frozen=True)
class Sweep:
    """The candidates of an auto-strength edit: the product of its axes (empty axis: the edit's own value).

    strengths: n_max values (default: ``default_strengths`` of the edit's params).
    tar_cfgs: target guidance values.
    seeds: seeds (several: the pick also chooses among noise draws).
    tokens: token states, e.g. (False, True) to learn whether the soft tokens help this image.
    margin: alignment points the pick gives up for preservation (the rule in the module docstring).
    """

    strengths: tuple[int, ...] = ()
    tar_cfgs: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    tokens: tuple[bool, ...] = ()
    margin: float = DEFAULT_MARGIN

    def check(self) -> None:
        """``ParameterError`` naming the axis when a value cannot run (each run is checked again by the editor)."""
        for name in ("strengths", "tar_cfgs", "seeds", "tokens"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)):
                raise ParameterError(name, f"the sweep's {name} must be a list, got {shown(values)}")
            if len(set(values)) != len(values):
                raise ParameterError(name, f"the sweep's {name} repeat a value: {shown(list(values))}")
        if any(not isinstance(t, bool) for t in self.tokens):
            raise ParameterError("tokens", f"the sweep's tokens must be true / false, got {shown(list(self.tokens))}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin) \
                or self.margin < 0:
            raise ParameterError("margin", f"the pick's margin must be a finite number >= 0, got {shown(self.margin)}")

    def to_dict(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}


def default_strengths(params: FlowEditParams) -> tuple[int, ...]:
    """``DEFAULT_STRENGTH_FRACTIONS`` of ``params.n_max``, rounded, within 1..T, without repeats."""
    values = {min(params.steps, max(1, round(params.n_max * fraction))) for fraction in DEFAULT_STRENGTH_FRACTIONS}
    return tuple(sorted(values))


def sweep_runs(params: FlowEditParams, sweep: Sweep, use_tokens: bool) -> list[tuple[FlowEditParams, bool]]:
    """The (params, use_tokens) of every candidate, noise lined up per seed (module docstring):
    ordered by tokens state, seed, target guidance, then strength."""
    sweep.check()
    strengths = tuple(sweep.strengths) or default_strengths(params)
    for n_max in strengths:  # an n_max over T is named as such, before the offsets it would make
        params.replace(n_max=n_max).check()
    strongest = max(strengths)
    runs = [(params.replace(n_max=n_max, tar_cfg=tar_cfg, seed=seed,
                            noise_offset=params.noise_offset + (strongest - n_max) * params.n_avg), tokens)
            for tokens in (tuple(sweep.tokens) or (use_tokens,))
            for seed in (tuple(sweep.seeds) or (params.seed,))
            for tar_cfg in (tuple(sweep.tar_cfgs) or (params.tar_cfg,))
            for n_max in sorted(strengths)]
    if len(runs) > MAX_CANDIDATES:
        raise ParameterError("strengths", f"the sweep makes {len(runs)} candidates, over the limit of "
                                          f"{MAX_CANDIDATES}: use fewer values on its axes")
    for run, _ in runs:
        run.check()  # a ParameterError names the field (an n_max over T, an offset past its bound)
    return runs


def alignment(scores: EditScores) -> float:
    """a_c: how much more the candidate reads as the target prompt than as the source prompt (x 100)."""
    return 100.0 * (scores.clip_target - scores.clip_source)


def preservation(scores: EditScores) -> float:
    """p_c: 100 = the source kept (DINO structure when measured, else CLIP image similarity)."""
    if scores.structure_distance is not None:
        return 100.0 * (1.0 - scores.structure_distance)
    return 100.0 * scores.image_similarity


def pick(alignments: Sequence[float], preservations: Sequence[float], strengths: Sequence[int],
         margin: float = DEFAULT_MARGIN) -> int:
    """The index the rule picks (module docstring): the most preserving candidate whose alignment is
    within ``margin`` of the best; ties go to the smaller strength, then to the earlier candidate."""
    if not alignments or not len(alignments) == len(preservations) == len(strengths):
        raise ValueError("pick needs one alignment, preservation and strength per candidate (and at least one)")
    best = max(alignments)
    eligible = [c for c, a in enumerate(alignments) if a >= best - margin]
    return min(eligible, key=lambda c: (-preservations[c], strengths[c], c))


@dataclass
class AutoResult:
    """The candidates of a sweep (in ``sweep_runs`` order), their scores and the pick."""

    candidates: list[EditResult]
    scores: list[EditScores]
    alignment: list[float]
    preservation: list[float]
    picked: int
    sweep: Sweep
    scorer: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> EditResult:
        return self.candidates[self.picked]

    @property
    def tokens_won(self) -> bool | None:
        """Whether the pick has the soft tokens on, where the sweep had both states (else None)."""
        if len({c.use_tokens for c in self.candidates}) < 2:
            return None
        return self.chosen.use_tokens

    def rows(self) -> list[dict[str, Any]]:
        """Per candidate: its setting, its two scores and the raw measures (the app's strip, the API)."""
        return [{"n_max": c.params.n_max, "tar_cfg": c.params.tar_cfg, "seed": c.params.seed,
                 "noise_offset": c.params.noise_offset, "use_tokens": c.use_tokens, "alignment": round(a, 4),
                 "preservation": round(p, 4), "picked": index == self.picked, **s.to_dict()}
                for index, (c, s, a, p) in enumerate(zip(self.candidates, self.scores, self.alignment,
                                                         self.preservation))]

    def metadata(self) -> dict[str, Any]:
        """The sweep, the scores and the pick, for a saved PNG (``EditResult.save(extra=...)``)."""
        return {"auto": {"sweep": self.sweep.to_dict(), "scorer": self.scorer, "rule": RULE, "picked": self.picked,
                         "tokens_won": self.tokens_won, "candidates": self.rows()}}

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None):
        """The chosen edit as a PNG whose metadata replays it and records the sweep."""
        return self.chosen.save(path, {**self.metadata(), **(extra or {})})


RULE = "least change whose alignment is within the margin of the best (editing.auto)"


def score_candidates(scorer: EditScorer, candidates: list[EditResult]) -> list[EditScores]:
    """The scores of each candidate against its prepared source; a masked edit is scored in its region."""
    first = candidates[0]

    def scored(group: list[EditResult], region: Any) -> list[EditScores]:
        return scorer.score(first.source_image, [c.image for c in group], first.source_prompt, first.target_prompt,
                            mask=None if region is None else region.values)

    if all(c.mask is first.mask for c in candidates):  # no mask, or one drawn for all: one batch
        return scored(candidates, first.mask)
    return [scored([c], c.mask)[0] for c in candidates]  # automatic masks: each candidate in its own region


def edit_auto(editor: FlowEditor, image: str | os.PathLike | bytes | Image.Image, source_prompt: str,
              target_prompt: str, scorer: EditScorer, params: FlowEditParams | None = None, *,
              sweep: Sweep | None = None, use_tokens: bool | None = None, max_side: int | None = None,
              mask: MaskLike | AutoMask | None = None, mask_options: MaskOptions | None = None,
              progress=None) -> AutoResult:
    """Edit ``image`` at every candidate of ``sweep`` (default: four strengths around ``params``, the
    preset's by default) in one batched run, score them with ``scorer`` and pick one (module docstring).
    The other arguments are ``FlowEditor.edit``'s; ``progress`` counts the strongest candidate's steps."""
    use_tokens = editor.has_tokens if use_tokens is None else bool(use_tokens)
    params = editor.default_params(use_tokens) if params is None else params
    sweep = sweep or Sweep()
    runs = sweep_runs(params, sweep, use_tokens)
    candidates = editor.edit_runs(image, source_prompt, target_prompt, runs, max_side=max_side, mask=mask,
                                  mask_options=mask_options, progress=progress)
    scores = score_candidates(scorer, candidates)
    alignments, preservations = [alignment(s) for s in scores], [preservation(s) for s in scores]
    picked = pick(alignments, preservations, [c.params.n_max for c in candidates], sweep.margin)
    return AutoResult(candidates, scores, alignments, preservations, picked, sweep, scorer.describe())
