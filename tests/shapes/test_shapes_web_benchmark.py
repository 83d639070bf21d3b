"""``benchmarks/shapes_web.py`` end to end at a tiny size (the bundled model stands in for the web
base; its shipped tokens for both token rows): tables, paired standard errors, the RESULT line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "shapes_web.py"
TOKENS = REPO / "assets" / "shapes-sd3-softrepa.safetensors"


@pytest.mark.slow
def test_shapes_web_benchmark_runs_tiny(capsys, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("shapes_web", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "shapes_web", module)
    spec.loader.exec_module(module)
    tokens = [f"softrepa={TOKENS}", f"prompt_tuning={TOKENS}"]
    argv = ["--web-model", str(REPO / "assets" / "shapes-sd3"), "--web-tokens", *tokens,
            "--clean-tokens", f"softrepa={TOKENS}", "--n", "3", "--sweep-n", "2",
            "--sweep-cfgs", "7", "--edits", "2", "--no-fid", "--threads", "1", "--out", str(tmp_path)]
    results = module.main(argv)
    web = results["web"]
    assert set(web) == {"base", "softrepa", "prompt_tuning"} and set(results["clean"]) == {"base", "softrepa"}
    assert len(web["base"]["cfg4"]["full"]) == 3 and len(web["base"]["cfg7"]["full"]) == 2
    # the same tokens on the same model, captions and seeds: identical outcomes, a zero paired difference
    assert web["softrepa"]["cfg4"]["full"] == web["prompt_tuning"]["cfg4"]["full"]
    assert 0.0 <= web["base"]["edit"]["success"] <= 1.0
    out = capsys.readouterr().out
    assert "| prompt_tuning |" in out and "+0.000 ± 0.000" in out
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(result) == 1 and "web_softrepa_fid=nan" in result[0] and "n=3 sweep_n=2 edits=2" in result[0]
    assert f"web_softrepa_full={web['softrepa']['cfg4']['overall']['full_prompt_acc']:.3f}" in result[0]
    # a rerun reads every stored method back (same settings), and only under the same settings
    assert (tmp_path / "web-prompt_tuning.json").exists()
    assert module.main([*argv, "--bases"]) == json.loads(json.dumps(results))
    assert module.main([*argv, "--bases", "--sweep-n", "1"]) == {"web": {}, "clean": {}}
