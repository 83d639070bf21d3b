"""``benchmarks/real_scale.py --scale tiny``: the real-size benchmark's code runs end to end on the CPU
(the figures it prints at real size need a GPU; docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_scale.py"


def test_real_scale_runs_at_tiny_scale(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("real_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "real_scale", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    results = module.main(["--scale", "tiny", "--device", "cpu", "--repeats", "1", "--train-batches", "2", "4"])
    row = results["edits"][64]
    assert row["floor"] > 0 and row["off"] > 0 and row["peak"] > 0
    assert set(results["train"]) == {2, 4} and all(seconds > 0 for seconds, _ in results["train"].values())
    result = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "edit_floor_ratio=" in result[0] and "peak_gb_train_b4=" in result[0]
    assert "scale=tiny device=cpu dtype=float32 resolution=64" in result[0]
