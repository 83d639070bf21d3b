import argparse

import pytest

from softrepa.cli_types import int_at_least


def test_int_at_least_accepts_the_bound_and_rejects_below_or_non_integers(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int_at_least(1))
    assert parser.parse_args(["--n", "1"]).n == 1
    for bad, message in (("0", "must be >= 1, got 0"), ("x", "expected an integer, got 'x'")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--n", bad])
        assert message in capsys.readouterr().err
    assert int_at_least(0)("0") == 0
