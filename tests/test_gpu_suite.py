"""``benchmarks/gpu_suite.py --scale tiny``: the one GPU command's code runs end to end on the CPU and
writes every row of its table (the figures at real size need a GPU; docs/benchmarks.md, The GPU suite)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from tests.benchmark_script import load_benchmark


@pytest.fixture
def suite(monkeypatch):
    return load_benchmark("gpu_suite", monkeypatch)


def table_rows(path: Path) -> list[list[str]]:
    """The table's body rows, as cells."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def run(suite, capsys, argv: list[str]) -> tuple[dict, list[str]]:
    results = suite.main(argv)
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("RESULT ") and sum(line.startswith("RESULT ") for line in out) == 1
    return results, out


def test_tiny_scale_writes_every_row(suite, capsys, tmp_path):
    out_file = tmp_path / "gpu_table.md"
    argv = ["--scale", "tiny", "--device", "cpu", "--out", str(out_file)]
    results, out = run(suite, capsys, argv)
    cases = suite.cases_for(suite.parse_args(argv))
    rows = table_rows(out_file)
    labels = [model.label for model in suite.MODELS.values()]
    assert [row[0] for row in rows] == [label for label in labels for _ in cases]  # every model, every row, in order
    assert [row[2] for row in rows[:len(cases)]] == [case.mode.format(dtype="float32") for case in cases]
    text = out_file.read_text()
    assert "device: **" in text and f"command: `python benchmarks/gpu_suite.py {' '.join(argv)}`" in text
    by_key = {(name, key): row for (name, key), row in results["rows"].items()}
    for name in suite.MODELS:
        for key in ("eager", "tokens", "vae-tiling", "train-4", "train-16", "candidates", "offload-model"):
            row = by_key[name, key]
            assert row.measured and row.seconds > 0 and row.peak_gb > 0, (name, key, row.notes)
        assert by_key[name, "offload-sequential"].notes.startswith("not measured: needs CUDA")
        assert by_key[name, "compiled-none"].notes == "not measured: --compile none"
    assert by_key["sd3-medium", "no-t5"].measured and by_key["flux-dev", "no-t5"].notes.startswith("n/a")
    assert "floor" in by_key["flux-dev", "eager"].notes and "candidates / singles" in by_key["sd3-medium", "candidates"].notes
    assert "measured=23 " in out[-1] and f"out={out_file}" in out[-1] and "flux-dev_edit_s=" in out[-1]


def test_rows_that_do_not_fit_the_budget_say_so(suite, capsys, tmp_path):
    out_file = tmp_path / "table.md"
    results, out = run(suite, capsys, ["--scale", "tiny", "--device", "cpu", "--models", "sd3-medium",
                                       "--budget-s", "0.01", "--out", str(out_file)])
    rows = table_rows(out_file)
    assert len(rows) == len(results["rows"]) > 0
    assert all(row[-1].startswith("not measured: the model was not built") for row in rows)
    assert "measured=0 " in out[-1] and "sd3-medium_edit_s=not-measured" in out[-1]


def test_a_training_step_out_of_memory_tries_smaller_pair_chunks(suite, monkeypatch):
    tried = []

    def measure_training(pipe, kind, batch, resolution, chunk, meter, warm_up):
        tried.append(chunk)
        if chunk > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return 1.5, 2.0  # seconds, peak GB

    monkeypatch.setattr(suite, "measure_training", measure_training)
    monkeypatch.setattr(suite, "token_layers", lambda pipe: 7)
    args = suite.parse_args(["--scale", "tiny", "--device", "cpu"])
    run = suite.ModelRun("flux-dev", args, torch.device("cpu"), torch.float32, table=None, end=0.0)
    assert run._train(16) == (2.0, 1.5, "--pair-chunk 4 (out of memory at 16); tokens m 4 on 7 blocks")
    assert tried == [16, 4] and run.trained


@pytest.mark.slow
def test_tiny_scale_compiled_rows(suite, capsys, tmp_path):
    if "compile" not in inspect.signature(suite.FlowEditor).parameters:
        pytest.skip("FlowEditor has no compile= in this checkout")
    results, _ = run(suite, capsys, ["--scale", "tiny", "--device", "cpu", "--models", "sd3-medium", "--compile",
                                     "default", "--out", str(tmp_path / "table.md")])
    row = results["rows"]["sd3-medium", "compiled-default"]
    assert row.measured and ("x eager" in row.notes or row.notes.startswith("ran eager")), row.notes
