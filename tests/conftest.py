"""Test-wide settings and the markers' rules (markers are registered in pyproject.toml).

One torch thread: on a shared 2-core machine, multi-threaded kernels on tiny tensors spend their
time waiting for each other (a tiny forward took 1.7 s with the default threads, 25 ms with one).

* ``slow`` tests run only with ``SOFTREPA_SLOW_TESTS=1`` (or when selected with ``-m slow``);
* ``gpu`` tests run only where CUDA is available;
* ``browser`` tests skip (fail under CI) without Chromium and Playwright, and a skipped browser
  test is repeated in a banner at the end of the run, so nobody mistakes it for a pass.

Property-based tests (``hypothesis``) of untrusted input run under one of two profiles: ``ci``
(the default: 500 generated cases per target, no deadline, since a shared machine's timing is not
the property) and ``slow`` (5000 cases; chosen with ``SOFTREPA_SLOW_TESTS=1`` or
``HYPOTHESIS_PROFILE=slow``). The examples are derandomized under CI, so a failure there reproduces.
"""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

FUZZ_CASES = {"ci": 500, "slow": 5000}  # generated cases per fuzz target (issue #24: at least 500 in CI)
for _profile, _cases in FUZZ_CASES.items():
    settings.register_profile(_profile, max_examples=_cases, deadline=None, derandomize=bool(os.environ.get("CI")),
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("slow" if os.environ.get("SOFTREPA_SLOW_TESTS") == "1" else "ci"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("SOFTREPA_SLOW_TESTS") == "1" or "slow" in (config.getoption("-m") or "")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow; run with SOFTREPA_SLOW_TESTS=1 or -m slow"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def pytest_terminal_summary(terminalreporter):
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "browser" in report.keywords]
    if skipped:
        terminalreporter.write_sep("!", "THE BROWSER TEST WAS SKIPPED: the app was not tested in a browser", red=True)
        for report in skipped:
            terminalreporter.write_line(f"  {report.nodeid}: {report.longrepr[-1]}")
        terminalreporter.write_line("  install Chromium with .ci/install-browser.sh (CI fails instead of skipping)")


def save_tiny_clip(directory: Path, image_size: int, patch_size: int) -> Path:
    """A tiny random CLIPModel (2 layers, 32 wide), the offline CLIP tokenizer and a PIL image processor
    at ``image_size``, saved together: the layout of a real CLIP folder (``openai/clip-vit-...``)."""
    from transformers import CLIPConfig, CLIPModel

    from editing.scoring import clip_image_processor_class
    from softrepa.tiny import CLIP_VOCAB_SIZE, clip_tokenizer

    config = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    clip_image_processor_class()(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP at 64 px (patch 16): the shapes world's image size, what scorers see here."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-64"), 64, 16)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP at 32 px (patch 8), the evaluation's metrics model."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), 32, 8)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny random ViTModel (DINO's architecture at toy size: patch 8, 2 layers, 32 wide), saved."""
    from transformers import ViTConfig, ViTModel

    directory = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8, qkv_bias=True)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(directory)
    return directory
