"""The source-velocity cache across variations (issue #26): a table per seed, filled by single edits
and by ``edit_candidates`` alike, held within a byte budget the editor reports."""

from __future__ import annotations

import pytest
import torch

from editing.editor import LRU, FlowEditor, table_bytes
from editing.flowedit import FlowEditParams
from tests.editing.conftest import SMALL, picture
from tests.editing.test_flowedit import CallLog, rel_err

SEEDS = [11, 12, 13, 14]  # the 4 variations


def held_bytes(editor: FlowEditor) -> int:
    """The bytes of the velocity tensors the editor holds, counted from the tensors themselves."""
    return sum(table_bytes(table) for table in editor._velocities.values())


@pytest.mark.parametrize("use_tokens", [False, True], ids=["tokens-off", "tokens-on"])
def test_reedits_after_four_variations_reuse_every_seed(pipe, editor, use_tokens):
    params, image = FlowEditParams(**SMALL), picture(7)
    editor.edit(image, "a cat", "a dog", params, use_tokens=use_tokens)  # the first seed
    editor.edit_candidates(image, "a cat", "a dog", params, seeds=SEEDS, use_tokens=use_tokens)
    fresh = FlowEditor(pipe, editor.attached_tokens, cache_size=0)  # the uncached edit
    for seed in [params.seed, *SEEDS]:  # back to the first seed, then each variation's
        again = params.replace(seed=seed, tar_cfg=9.0)
        with CallLog(pipe.transformer) as log:
            cached = editor.edit(image, "a cat", "a fox", again, use_tokens=use_tokens)
        assert cached.stats.source_velocities_reused == params.n_max
        assert log.sizes == [2] * params.n_max  # the target half only
        uncached = fresh.edit(image, "a cat", "a fox", again, use_tokens=use_tokens)
        # not bit for bit: the transformer's batch-2 and batch-4 calls round differently on a CPU
        assert rel_err(cached.latents, uncached.latents) <= 1e-5
    assert editor.cache_info()["velocity_sets"] == 1 + len(SEEDS)


def test_variations_reuse_tables_only_when_every_seed_has_one(pipe, editor):
    params, image = FlowEditParams(**SMALL), picture(8)
    editor.edit_candidates(image, "a cat", "a dog", params, seeds=SEEDS[:2])
    partial = editor.edit_candidates(image, "a cat", "a fox", params, seeds=SEEDS[:3])
    assert partial[0].stats.source_velocities_reused == 0  # one seed had no table: the run computed all
    whole = editor.edit_candidates(image, "a cat", "a cow", params, seeds=SEEDS[:3])
    assert whole[0].stats.source_velocities_reused == params.n_max
    fresh = FlowEditor(pipe, editor.attached_tokens, cache_size=0).edit_candidates(image, "a cat", "a cow", params,
                                                                                   seeds=SEEDS[:3])
    for cached, uncached in zip(whole, fresh):
        assert rel_err(cached.latents, uncached.latents) <= 1e-5


def test_cancelled_variations_keep_their_finished_steps(editor):
    params, image = FlowEditParams(**SMALL), picture(9)

    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("cancelled by the user")

    with pytest.raises(RuntimeError, match="cancelled"):
        editor.edit_candidates(image, "a cat", "a dog", params, seeds=SEEDS, progress=cancel)
    for seed in SEEDS:
        assert editor.edit(image, "a cat", "a fox", params.replace(seed=seed)).stats.source_velocities_reused == 2


def test_velocity_budget_evicts_and_reports_the_bytes_held(pipe):
    params, image = FlowEditParams(**SMALL), picture(10)
    probe = FlowEditor(pipe, kind="sd3")
    first = probe.edit(image, "a cat", "a dog", params)
    table = params.n_max * params.n_avg * first.latents.numel() * first.latents.element_size()
    assert probe.cache_info()["velocity_bytes"] == held_bytes(probe) == table
    editor = FlowEditor(pipe, kind="sd3", velocity_cache_bytes=2 * table + 1)  # two tables fit, not three
    editor.edit_candidates(image, "a cat", "a dog", params, seeds=SEEDS[:3])
    info = editor.cache_info()
    assert info["velocity_sets"] == 2 and info["velocity_bytes"] == held_bytes(editor) == 2 * table
    assert info["velocity_budget_bytes"] == 2 * table + 1
    reuse = [editor.edit(image, "a cat", "a fox", params.replace(seed=seed)).stats.source_velocities_reused
             for seed in reversed(SEEDS[:3])]  # 13 and 12 are held; 11 was dropped first
    assert reuse == [params.n_max, params.n_max, 0]
    assert editor.cache_info()["velocity_bytes"] == held_bytes(editor) == 2 * table
    tight = FlowEditor(pipe, kind="sd3", velocity_cache_bytes=table - 1)  # not even one table
    tight.edit(image, "a cat", "a dog", params)
    assert tight.cache_info()["velocity_sets"] == tight.cache_info()["velocity_bytes"] == 0
    assert tight.edit(image, "a cat", "a fox", params).stats.source_velocities_reused == 0
    editor.clear_cache()
    assert editor.cache_info()["velocity_bytes"] == 0


def test_lru_counts_entries_or_sizes():
    counted = LRU(2)
    for key in "abc":
        counted.put(key, key)
    assert counted.get("a") is None and counted.values() == ["b", "c"] and counted.currsize == 2
    sized: LRU[str, torch.Tensor] = LRU(10, sizeof=lambda value: value.numel())
    sized.put("a", torch.zeros(4))
    sized.put("b", torch.zeros(4))
    sized.get("a")  # now the most recently used
    sized.put("c", torch.zeros(4))  # 12 > 10: "b" goes
    assert sized.get("b") is None and len(sized) == 2 and sized.currsize == 8
    sized.put("a", torch.zeros(6))  # put again: measured again
    assert sized.currsize == 10
    sized.put("d", torch.zeros(11))  # larger than the whole budget: not kept, nothing dropped
    assert sized.get("d") is None and sized.currsize == 10
    assert LRU(0).put("a", 1) == 1 and len(LRU(0)) == 0
