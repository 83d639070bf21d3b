"""``--threads`` / ``SOFTREPA_THREADS`` (``softrepa.runtime``): parsing, the auto rule, applying it to
torch, and the flag on every entry point (editing, training, generation, evaluation, the app)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from softrepa.runtime import (SMALL_MACHINE_CORES, THREADS_ENV, add_threads_arg, apply_threads, parse_threads,
                              threads_for)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_threads():
    """Tests that set torch's threads put the test session's count back."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def threads_parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    add_threads_arg(parser, environ=environ)
    return parser


@pytest.mark.parametrize(("text", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("1", 1), (" 12 ", 12), (3, 3)])
def test_parse_threads_accepts_auto_and_whole_numbers(text, expected):
    assert parse_threads(text) == expected


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5", "", "auto1"])
def test_parse_threads_refuses_anything_else_saying_what_to_give(text):
    with pytest.raises(ValueError) as error:
        parse_threads(text)
    message = str(error.value)
    assert "--threads" in message and THREADS_ENV in message and "give auto" in message


def test_the_flag_defaults_to_auto_then_the_environment_and_the_command_line_wins():
    assert threads_parser({}).parse_args([]).threads == "auto"
    assert threads_parser({THREADS_ENV: "  "}).parse_args([]).threads == "auto"  # blank: unset
    assert threads_parser({THREADS_ENV: "3"}).parse_args([]).threads == 3
    assert threads_parser({THREADS_ENV: "3"}).parse_args(["--threads", "1"]).threads == 1
    assert threads_parser({THREADS_ENV: "3"}).parse_args(["--threads", "auto"]).threads == "auto"
    assert threads_parser({THREADS_ENV: "many"}).parse_args(["--threads", "2"]).threads == 2  # the flag wins


@pytest.mark.parametrize(("environ", "argv"), [({}, ["--threads", "0"]), ({}, ["--threads", "lots"]),
                                               ({THREADS_ENV: "0"}, []), ({THREADS_ENV: "lots"}, [])])
def test_a_bad_value_is_a_usage_error_naming_the_flag_and_the_variable(environ, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        threads_parser(environ).parse_args(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in error
    assert "argument --threads" in error and THREADS_ENV in error and "give auto" in error


def test_auto_is_one_thread_on_small_machines_and_keeps_torch_or_omp_elsewhere():
    assert threads_for("auto", cores=2, environ={}) == 1
    assert threads_for("auto", cores=SMALL_MACHINE_CORES, environ={}) == 1
    assert threads_for("auto", cores=SMALL_MACHINE_CORES + 1, environ={}) is None  # torch's default
    assert threads_for("auto", cores=2, environ={"OMP_NUM_THREADS": "2"}) is None  # e.g. accelerate launch's
    assert threads_for("3", cores=2, environ={"OMP_NUM_THREADS": "1"}) == 3  # a number is taken as given
    with pytest.raises(ValueError, match="--threads"):
        threads_for(0)


def test_apply_threads_sets_torch_and_returns_the_count(restore_threads):
    assert apply_threads(2) == 2 == torch.get_num_threads()
    assert apply_threads("1") == 1 == torch.get_num_threads()  # a second call: interop threads are not set again
    assert apply_threads("auto") == torch.get_num_threads()


def test_training_takes_threads_but_keeps_it_out_of_the_run_config(monkeypatch):
    from softrepa.train import TrainConfig, parse_command_line

    monkeypatch.setenv(THREADS_ENV, "2")
    config, threads = parse_command_line(["--data", "shapes/"])
    assert threads == 2 and isinstance(config, TrainConfig) and not hasattr(config, "threads")
    assert parse_command_line(["--data", "shapes/", "--threads", "auto"])[1] == "auto"


def test_generation_and_evaluation_take_threads(monkeypatch, capsys):
    from evaluation.cli import parse_args as evaluation_args
    from softrepa.generate import parse_args as generate_args

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert generate_args(["--output", "out", "--prompt", "a"]).threads == "auto"
    assert generate_args(["--output", "out", "--prompt", "a", "--threads", "4"]).threads == 4
    edit = evaluation_args(["edit", "--pairs", "pairs.jsonl", "--out", "run", "--threads", "1"])
    assert edit.threads == 1
    assert evaluation_args(["t2i", "--captions", "c.json", "--out", "run"]).threads == "auto"
    with pytest.raises(SystemExit):
        evaluation_args(["t2i", "--captions", "c.json", "--out", "run", "--threads", "0"])
    assert "argument --threads" in capsys.readouterr().err


def test_the_app_has_the_same_setting_default_auto():
    from app.settings import SettingsError, parse_settings

    assert parse_settings([], env={}).threads == "auto"
    assert parse_settings([], env={THREADS_ENV: "Auto"}).threads == "auto"
    assert parse_settings([], env={THREADS_ENV: "3"}).threads == 3
    assert parse_settings(["--threads", "1"], env={THREADS_ENV: "3"}).threads == 1  # the flag wins
    with pytest.raises(SettingsError, match=f"--threads / {THREADS_ENV}: 0 must be at least 1"):
        parse_settings(["--threads", "0"], env={})
    with pytest.raises(SettingsError, match="not a whole number"):
        parse_settings([], env={THREADS_ENV: "lots"})


def test_edit_under_load_benchmark_arguments(monkeypatch):
    spec = importlib.util.spec_from_file_location("edit_under_load", REPO / "benchmarks" / "edit_under_load.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "edit_under_load", module)
    spec.loader.exec_module(module)
    args = module.parse_args([])
    assert (args.threads, args.compare, args.repeats, args.load) == (None, None, 3, 2)
    args = module.parse_args(["--threads", "1", "--compare", "AUTO", "--repeats", "5"])
    assert (args.threads, args.compare, args.repeats) == ("1", "auto", 5)
    with pytest.raises(SystemExit):
        module.parse_args(["--compare", "0"])
    with pytest.raises(SystemExit):
        module.parse_args(["--repeats", "0"])
    monkeypatch.setenv(THREADS_ENV, "7")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert THREADS_ENV not in module.child_env() and "OMP_NUM_THREADS" not in module.child_env()
