"""Batch files as untrusted input, fuzzed (``hypothesis``): generated .yaml and .jsonl files of
valid rows mixed with wrong types, out-of-range and non-finite numbers, missing, extra and
misspelt keys, run settings, huge strings, lone surrogates, nested junk, non-UTF-8 bytes and
alias bombs are read and planned (``editing.cli.plan_jobs``, no model). Each gives jobs that can
run or messages "FILE:LINE: ..." naming the field; never another exception, and a valid row is
never lost. Cases per test: the hypothesis profile (tests/conftest.py: 500 in CI, 5000 slow).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import given, strategies as st

from editing import cli
from editing.batch import AUTO_MASK, JSONL_FIELDS, MAX_PROMPT_CHARS, RUN_SETTINGS, YAML_FIELDS
from editing.params import FlowEditParams

IMAGES = ("a.png", "sub/b.png")  # created in each example's folder (the readers never open them)
MASKS = ("m.png",)
# what a message about a whole row (not one field) says
ROW_PROBLEMS = ("expected a mapping", "expected a JSON object", "expected a list", "not valid JSON", "not valid YAML",
                "not UTF-8", "the line is over", "the entry ", "more than", "image file ", "mask file ", "output ")
YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as a new line

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3), max_leaves=8)
huge_text = st.builds(lambda char, n: char * n, st.sampled_from("a/é "), st.integers(MAX_PROMPT_CHARS + 1, 6000))
lone_surrogate = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
prompt = st.text(min_size=1, max_size=30).filter(str.strip)
paths = st.sampled_from(IMAGES + ("missing.png", "sub", "../escape.png", "/abs/none.png", "~nobody-x/a.png",
                                  "a\x00.png", "x" * 300, ""))
masks = st.sampled_from(MASKS + ("auto", "AUTO", "gone.png")) | junk
odd_keys = st.sampled_from(sorted(RUN_SETTINGS) + ["masks", "source_promt", "target_prompts", "target_prompt",
                                                   "input_img", "image", "id", "image_sha256", "changed_span"])
values = junk | huge_text | lone_surrogate | paths | prompt


def yaml_row(good: bool):
    """A FlowEdit edits.yaml entry: valid, or with any field replaced, dropped or added."""
    valid = st.fixed_dictionaries({"input_img": st.sampled_from(IMAGES), "source_prompt": prompt,
                                   "target_prompts": st.lists(prompt, min_size=1, max_size=3, unique=True)},
                                  optional={"mask": st.sampled_from(MASKS + ("auto",))})
    if good:
        return valid
    return st.builds(_mutated, valid, st.dictionaries(st.sampled_from(YAML_FIELDS) | odd_keys | st.text(max_size=8),
                                                      values, max_size=4), st.sets(st.sampled_from(YAML_FIELDS)))


def jsonl_row(good: bool):
    valid = st.fixed_dictionaries({"image": st.sampled_from(IMAGES), "source_prompt": prompt, "target_prompt": prompt},
                                  optional={"mask": st.sampled_from(MASKS + ("auto",)), "id": st.integers(0, 9),
                                            "image_sha256": st.text(max_size=8)})  # provenance is ignored
    if good:
        return valid
    return st.builds(_mutated, valid, st.dictionaries(st.sampled_from(JSONL_FIELDS) | odd_keys | st.text(max_size=8),
                                                      values, max_size=4), st.sets(st.sampled_from(JSONL_FIELDS)))


def _mutated(row: dict, changes: dict, dropped: set) -> dict:
    return {key: value for key, value in {**row, **changes}.items() if key not in dropped}


def rows(row) -> st.SearchStrategy:
    """(good?, row) pairs: valid rows, mutated rows and rows that are not objects at all."""
    return st.lists(st.tuples(st.just(True), row(True)) | st.tuples(st.just(False), row(False))
                    | st.tuples(st.just(False), junk), max_size=6)


def setup_folder(folder: Path) -> None:
    for name in IMAGES + MASKS:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"PNG")


def plan(batch: Path, folder: Path) -> tuple[list, list, list[str]]:
    """What ``python -m editing --batch`` plans before any model loads, checked: the jobs can run."""
    args = cli.parse_args(["--batch", str(batch), "--out", str(folder / "out")])
    jobs, outputs, errors = cli.plan_jobs(args, use_tokens=False, log=print)
    cli.params_from_args(args, "sd3", use_tokens=False).check()  # the one set of parameters every row runs with
    for job, out in zip(jobs, outputs):
        for text in (job.source_prompt, job.target_prompt):
            assert isinstance(text, str) and text.strip() and len(text) <= MAX_PROMPT_CHARS
            text.encode("utf-8")
        assert job.image.is_file() and (job.mask in (None, AUTO_MASK) or job.mask.is_file())
        assert out.parent == (folder / "out") and job.origin.startswith(f"{batch}:")
    assert len(set(outputs)) == len(outputs)
    return jobs, outputs, errors


def check_messages(errors: list[str], batch: Path, lines: int) -> set[int]:
    """Every message starts with the file (and a line in it) and names a field or a row-level
    problem; returns the lines that have one."""
    failed = set()
    for message in errors:
        assert message.startswith(str(batch)), message
        where = re.match(re.escape(str(batch)) + r":(\d+): (.*)", message, re.S)
        if where is None:  # about the whole file: empty, not UTF-8 at an unknown line ...
            continue
        line, text = int(where[1]), where[2]
        assert 1 <= line <= lines, message
        assert re.match(r"'[^']+'|\"", text) or text.startswith(ROW_PROBLEMS), message
        failed.add(line)
    return failed


@given(rows(yaml_row), st.sampled_from(["plain", "bomb", "bad byte", "not a list"]))
def test_yaml_batches_give_runnable_jobs_or_field_messages(entries, damage):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        setup_folder(folder)
        texts = [yaml.safe_dump([row], allow_unicode=True) for _, row in entries]
        text = "".join(texts)
        if damage == "bomb":  # a billion laughs: 10 nodes standing for 10**9
            text += "- a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
                f"  b{k}: &b{k} [{', '.join([f'*b{k - 1}' if k else '*a'] * 10)}]\n" for k in range(8))
        batch = folder / "edits.yaml"
        batch.write_bytes(text.encode("utf-8", "surrogatepass") + (b"\xff\n" if damage == "bad byte" else b""))
        if damage == "not a list":
            batch.write_text("input_img: a.png\nsource_prompt: x\n")
        jobs, _, errors = plan(batch, folder)
        failed = check_messages(errors, batch, len(YAML_LINE_BREAK.findall(text)) + 2)
        if damage == "plain" and not any(_has_surrogate(row) for _, row in entries):
            starts = [node.start_mark.line + 1 for node in (yaml.compose(text).value if entries else [])]
            ran = {int(job.origin.rsplit(":", 1)[1]) for job in jobs}
            for (good, _), line in zip(entries, starts):
                assert not good or line in ran or line in failed  # a valid row runs (or clashes with another)
                assert line in ran or line in failed  # a row is never dropped silently


@given(rows(jsonl_row), st.lists(st.binary(max_size=12) | st.just(b"[" * 3000) | st.just(b"\xef\xbb\xbf{}"),
                                 max_size=2))
def test_jsonl_batches_give_runnable_jobs_or_field_messages(entries, raw_lines):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        setup_folder(folder)
        lines = [json.dumps(row).encode() for _, row in entries]
        batch = folder / "rows.jsonl"
        batch.write_bytes(b"\n".join(lines + [line.replace(b"\n", b" ") for line in raw_lines]) + b"\n")
        jobs, _, errors = plan(batch, folder)
        failed = check_messages(errors, batch, len(lines) + len(raw_lines))
        ran = {int(job.origin.rsplit(":", 1)[1]) for job in jobs}
        for number, (good, row) in enumerate(entries, start=1):
            assert number in ran or number in failed  # a row is never dropped silently
            assert not good or number in ran or number in failed
            if isinstance(row, dict) and set(row) & RUN_SETTINGS:
                assert number not in ran  # a row that sets a parameter never runs with the command's instead


def _has_surrogate(value) -> bool:
    """Whether ``value`` holds a lone surrogate (written to a .yaml it makes the file not UTF-8)."""
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_surrogate(v) for v in value)


def test_the_fuzzed_parameters_are_the_rules_of_flowedit_params():
    """The rows' refused run settings include every FlowEditParams field (a new field is refused too)."""
    assert set(FlowEditParams().to_dict()) <= RUN_SETTINGS
