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
