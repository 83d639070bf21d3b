"""``benchmarks/edit_latency.py`` measures what its rows say: each case runs on an editor of its own,
so the re-edits (alone, after 4 variations, a variation's seed) find every step's source velocities
and the first edits and new seeds find none (checked at tiny size; the timings are not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "edit_latency.py"
TINY = ["--model", "random-sd3", "--layers", "2", "--heads", "2", "--head-dim", "16", "--size", "16", "--steps", "4",
        "--n-max", "3", "--repeats", "2"]


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("edit_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "edit_latency", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_case_hits_or_misses_the_cache_as_its_row_says(monkeypatch, capsys):
    module = load_script(monkeypatch)
    args = module.parse_args(TINY)
    setup = module.make_setup(module.build_model(args, module.torch.device("cpu")), args)
    cases, _, _, user = module.measure(setup, args)
    reused = {name: [(run[2], run[3]) for run in case.runs] for name, case in cases.items()}
    steps = args.n_max
    for name in ("re-edit, new target", "re-edit after 4 variations", "re-edit of a variation's seed"):
        assert reused[name] == [(steps, steps)] * args.repeats, name
    for name in ("first edit, tokens off", "first edit, tokens on", "4 candidates, one batched run"):
        assert reused[name] == [(0, steps)] * args.repeats, name
    assert reused["4 single edits (4 new seeds)"] == [(0, 4 * steps)] * args.repeats
    assert user.cache_info()["velocity_sets"] == 1 + 4 * args.repeats  # the first seed and every variation's
    module.report(setup, args, cases, [0.5], {"singles": [1.0], "candidates": [1.0]}, user,
                  module.torch.device("cpu"))
    result = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "reedit_after_variations_ratio=" in result[0]
    assert "reedit_variation_seed_ratio=" in result[0] and "model=random-sd3-2x32" in result[0]
