"""editing.auto: the sweep's candidates equal single edits, share the source half of the batch, and the
pick follows its rule; on the tiny random SD3 pipeline with random tokens and a tiny random CLIP."""

from __future__ import annotations

import pytest
import torch

from editing.auto import Sweep, alignment, default_strengths, edit_auto, pick, preservation, sweep_runs
from editing.editor import read_png_metadata
from editing.flowedit import FlowEditParams, ParameterError
from editing.masks import AutoMask
from editing.scoring import EditScorer, EditScores
from tests.editing.conftest import SMALL, picture

PROMPTS = ("a photo of a cat", "a photo of a dog")
PARAMS = FlowEditParams(**dict(SMALL, steps=10, n_max=6))


def test_default_strengths_spread_around_the_presets():
    assert default_strengths(FlowEditParams(steps=28, n_max=20)) == (14, 17, 20, 24)
    assert default_strengths(FlowEditParams(steps=50, n_max=33)) == (23, 28, 33, 40)
    assert default_strengths(FlowEditParams(steps=10, n_max=10)) == (7, 8, 10)  # never past T, no repeats


def test_runs_line_the_noise_up_on_the_strongest_candidate():
    runs = sweep_runs(PARAMS.replace(n_avg=2), Sweep(strengths=(3, 6, 4), tokens=(False, True)), use_tokens=False)
    assert [(p.n_max, p.noise_offset, t) for p, t in runs] == [
        (3, 6, False), (4, 4, False), (6, 0, False), (3, 6, True), (4, 4, True), (6, 0, True)]
    assert len({p.source_velocity_key() for p, _ in runs}) == 1  # one noise stream: one velocity table


def test_each_candidate_equals_the_single_edit_with_its_settings(editor):
    sweep = Sweep(strengths=(3, 6), tar_cfgs=(4.0, 7.0), seeds=(3, 11), tokens=(False, True))
    runs = sweep_runs(PARAMS, sweep, use_tokens=True)
    batched = editor.edit_runs(picture(1), *PROMPTS, runs)
    editor.clear_cache()
    assert len(batched) == 16
    for (params, use_tokens), result in zip(runs, batched):
        single = editor.edit(picture(1), *PROMPTS, params, use_tokens=use_tokens)
        assert result.params == params and result.use_tokens == use_tokens
        torch.testing.assert_close(result.latents, single.latents, atol=2e-5, rtol=0)  # batch-size rounding


def test_the_sweep_runs_the_source_half_once_per_step(editor):
    """Items sent to the transformer: 2 source items per step of the strongest candidate, 2 target items
    per step of each candidate (CFG on both branches), instead of 4 per candidate-step."""
    items = []
    hook = editor.pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: items.append(
        kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        strengths = (2, 4, 6)
        editor.edit_runs(picture(2), *PROMPTS, sweep_runs(PARAMS, Sweep(strengths=strengths), use_tokens=False))
    finally:
        hook.remove()
    assert sum(items) == 2 * max(strengths) + 2 * sum(strengths) and len(items) == max(strengths)


def test_the_pick_is_the_least_change_within_the_margin():
    assert pick([10.0, 12.0, 12.5], [90.0, 80.0, 70.0], [10, 15, 20], margin=1.0) == 1  # 10 is 2.5 short
    assert pick([10.0, 12.0, 12.5], [90.0, 80.0, 70.0], [10, 15, 20], margin=3.0) == 0
    assert pick([10.0, 12.0, 12.5], [90.0, 80.0, 70.0], [10, 15, 20], margin=0.0) == 2
    assert pick([5.0, 5.0], [80.0, 80.0], [20, 10]) == 1  # a tie: the smaller strength
    with pytest.raises(ValueError, match="one alignment"):
        pick([], [], [])


def test_the_two_scores_from_the_raw_measures():
    scores = EditScores(clip_target=0.30, clip_source=0.25, directional=0.1, image_similarity=0.9,
                        pixel_similarity=0.95, structure_distance=None)
    assert alignment(scores) == pytest.approx(5.0) and preservation(scores) == pytest.approx(90.0)
    with_dino = EditScores(**dict(scores.to_dict(), structure_distance=0.02))
    assert preservation(with_dino) == pytest.approx(98.0)  # DINO structure first where it was measured


def test_edit_auto_scores_every_candidate_and_says_whether_the_tokens_won(editor, clip_dir, tmp_path):
    scorer = EditScorer(clip_dir, device="cpu")
    result = edit_auto(editor, picture(3), *PROMPTS, scorer, PARAMS, sweep=Sweep(strengths=(3, 6), tokens=(False, True)))
    assert len(result.candidates) == 4 and result.tokens_won == result.chosen.use_tokens
    source = result.candidates[0].source_image
    expected = scorer.score(source, [c.image for c in result.candidates], *PROMPTS)
    for got, want in zip(result.scores, expected):
        assert got.structure_distance is None and want.structure_distance is None
        assert [got.clip_target, got.clip_source, got.image_similarity, got.pixel_similarity] == pytest.approx(
            [want.clip_target, want.clip_source, want.image_similarity, want.pixel_similarity], abs=1e-6)
    assert result.picked == pick(result.alignment, result.preservation, [c.params.n_max for c in result.candidates],
                                 result.sweep.margin)
    metadata = read_png_metadata(result.save(tmp_path / "auto.png"))
    assert metadata["params"] == result.chosen.params.to_dict()  # replays the pick, its noise offset too
    assert metadata["auto"]["picked"] == result.picked and len(metadata["auto"]["candidates"]) == 4
    alone = edit_auto(editor, picture(3), *PROMPTS, scorer, PARAMS, sweep=Sweep(strengths=(3, 6)))
    assert alone.tokens_won is None  # one tokens state: nothing to say


def test_an_automatic_mask_is_found_per_candidate(editor, clip_dir):
    result = edit_auto(editor, picture(4), *PROMPTS, EditScorer(clip_dir, device="cpu"), PARAMS,
                       sweep=Sweep(strengths=(3, 6)), mask=AutoMask(steps=2))
    for candidate in result.candidates:
        single = editor.edit(picture(4), *PROMPTS, candidate.params, use_tokens=candidate.use_tokens,
                             mask=AutoMask(steps=2))
        assert (single.mask.values == candidate.mask.values).all()
        torch.testing.assert_close(candidate.latents, single.latents, atol=2e-5, rtol=0)


@pytest.mark.parametrize("sweep, field, match", [
    (Sweep(strengths=(3, 3)), "strengths", "repeat a value"),
    (Sweep(strengths=(3, 11)), "n_max", "only 10 steps"),
    (Sweep(tokens=(1,)), "tokens", "true / false"),
    (Sweep(margin=float("nan")), "margin", "finite number"),
    (Sweep(strengths=tuple(range(1, 10)), seeds=(1, 2, 3, 4)), "strengths", "over the limit of 32"),
])
def test_a_sweep_that_cannot_run_names_its_axis(sweep, field, match):
    with pytest.raises(ParameterError, match=match) as excinfo:
        sweep_runs(PARAMS, sweep, use_tokens=False)
    assert excinfo.value.field == field
