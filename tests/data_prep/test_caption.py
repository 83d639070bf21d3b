"""Tests for the Appendix C caption pipeline (data_prep/caption.py and its helpers).

Models are tiny random-weight LLaVA / Llama folders built offline from configs
(data_prep/tiny_models.py); their text is word salad, so the accept path is tested with
an injected deterministic rewriter, and the all-model run checks bookkeeping only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from PIL import Image

from data_prep import caption as cap
from data_prep import prompts
from data_prep.images import list_images
from data_prep.jsonl_store import JsonlAppender, merge_rows, read_rows, repair_tail
from data_prep.models import resolve_device, resolve_dtype
from data_prep.outputs import CRASH_AFTER_ROWS_ENV, CRASH_EXIT_CODE
from data_prep.rewrite_check import RewriteRules, check_rewrite, split_words

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_TEXT = Path("/work/shared/paper/softrepa-paper.txt")


# ----------------------------------------------------------------------------- helpers


def make_images(folder: Path, count: int, unreadable: tuple[str, ...] = ()) -> list[str]:
    """``count`` small PNGs of different sizes and colours, plus broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img_{index:02d}.png"
        Image.new("RGB", (40 + 8 * index, 32 + 4 * index), (30 * index % 255, 90, 160)).save(folder / name)
        names.append(name)
    for name in unreadable:
        (folder / name).write_bytes(b"this is not an image")
        names.append(name)
    return names


def image_names_in(*paths: Path) -> list[str]:
    return [row["image_name"] for path in paths for row in read_rows(path)]


class FirstWordSwap:
    """Deterministic rewriter: replaces the first word of the caption (always a valid
    one-concept edit of a colour-free caption)."""

    model_id = "test/first-word-swap"
    settings = {"kind": "deterministic"}

    def __init__(self):
        self.seeds: list[int] = []

    def __call__(self, captions, seed):
        self.seeds.append(seed)
        out = []
        for caption in captions:
            words = caption.split(" ")
            words[0] = "zebra" if words[0] != "zebra" else "okapi"
            out.append(" ".join(words))
        return out


class FixedCaptioner:
    """Captions without a model, counting how many images it saw."""

    model_id = "test/fixed-captioner"

    def __init__(self, text: str = "A wooden boat floats on a calm lake near a tall tree."):
        self.text = text
        self.seen = 0

    def __call__(self, images):
        self.seen += len(images)
        return [self.text for _ in images]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from data_prep.tiny_models import build_tiny_llama, build_tiny_llava

    root = tmp_path_factory.mktemp("tiny_models")
    return build_tiny_llava(root / "llava"), build_tiny_llama(root / "llama")


def tiny_args(images: Path, out: Path, llava: Path, llama: Path, *extra: str) -> list[str]:
    return [
        "--images", str(images), "--out", str(out), "--captioner", str(llava), "--rewriter", str(llama),
        "--device", "cpu", "--batch-size", "3", "--caption-max-new-tokens", "10",
        "--rewrite-max-new-tokens", "10", "--max-retries", "1", "--no-progress", *extra,
    ]


# ----------------------------------------------------------------------------- prompts


def _normalise(text: str) -> str:
    return " ".join(text.replace("\u2022", " ").split())


def test_prompts_are_the_papers_verbatim():
    assert prompts.CAPTION_PROMPT == "Describe the object and background in the image"
    assert prompts.REWRITE_INSTRUCTION.startswith("You are an AI assistant for generating paired text prompts")
    assert prompts.REWRITE_INSTRUCTION.endswith("do not alter its color, shape, or other attributes.")
    assert prompts.REWRITE_EXAMPLE_OUTPUT == prompts.REWRITE_EXAMPLE_INPUT.replace("dog", "fox")
    if not PAPER_TEXT.exists():
        pytest.skip("paper text not available on this machine")
    paper = _normalise(PAPER_TEXT.read_text(encoding="utf-8"))
    assert f"\u201d{prompts.CAPTION_PROMPT}\u201d" in paper
    block = _normalise(
        f"{prompts.REWRITE_INSTRUCTION} Example: Input: {prompts.REWRITE_EXAMPLE_INPUT} "
        f"Output: {prompts.REWRITE_EXAMPLE_OUTPUT}"
    )
    assert block in paper


def test_rewrite_chat_carries_instruction_example_and_caption():
    chat = prompts.build_rewrite_chat("A cat on a mat.")
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[0]["content"] == prompts.REWRITE_INSTRUCTION
    assert chat[1]["content"].endswith(prompts.REWRITE_EXAMPLE_INPUT)
    assert chat[2]["content"] == prompts.REWRITE_EXAMPLE_OUTPUT
    assert chat[3]["content"] == "Input: A cat on a mat."


def test_instruction_chat_carries_the_instruction_the_rules_and_the_papers_example():
    chat = prompts.build_instruction_chat("A cat on a mat.", "  make the cat\na dog ")
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[-1]["content"] == "Instruction: make the cat a dog\nInput: A cat on a mat."
    assert chat[1]["content"] == (f"Instruction: {prompts.INSTRUCTED_EXAMPLE_INSTRUCTION}\n"
                                  f"Input: {prompts.REWRITE_EXAMPLE_INPUT}")
    assert chat[2]["content"] == prompts.REWRITE_EXAMPLE_OUTPUT
    # the paper's rules 4 and 5, word for word; the colour ban (rule 6) is left to the instruction
    system = chat[0]["content"]
    for rule in ("Preserve all other words exactly as they are. Do not change sentence structure, introduce new "
                 "elements, or modify additional details.",
                 "Do not provide any additional words\u2014output only the modified text description."):
        assert rule in system and rule in prompts.REWRITE_INSTRUCTION
    assert "Do not change or add colors" not in system
    # the example answer is a valid one-concept rewrite of its input, as the instruction asks
    verdict = check_rewrite(prompts.REWRITE_EXAMPLE_INPUT, chat[2]["content"])
    assert verdict.ok and (verdict.span.source, verdict.span.target) == ("dog", "fox")
    assert prompts.build_rewrite_chat("A cat on a mat.")[0]["content"] == prompts.REWRITE_INSTRUCTION  # unchanged


# ----------------------------------------------------------------------------- validator


def test_validator_accepts_the_papers_own_example():
    verdict = check_rewrite(prompts.REWRITE_EXAMPLE_INPUT, prompts.REWRITE_EXAMPLE_OUTPUT)
    assert verdict.ok, verdict.reason
    assert (verdict.span.source, verdict.span.target, verdict.span.occurrences) == ("dog", "fox", 5)


@pytest.mark.parametrize(
    "source, rewrite, span",
    [
        ("A dog sits on the grass.", "A fox sits on the grass.", ("dog", "fox")),
        ("A starfish lies on the sand.", "A sea turtle lies on the sand.", ("starfish", "sea turtle")),
        ("There is a dog on a sofa. The dog sleeps.", "There is an owl on a sofa. The owl sleeps.",
         ("a dog", "an owl")),
        ("A brown dog sits near a red car.", "A brown dog sits near a red truck.", ("car", "truck")),
    ],
)
def test_validator_accepts_one_concept_swaps(source, rewrite, span):
    verdict = check_rewrite(source, rewrite)
    assert verdict.ok, verdict.reason
    assert (verdict.span.source, verdict.span.target) == span


@pytest.mark.parametrize(
    "rewrite, reason_words",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("A red car parks on a street.", "identical"),
        ("Output: A red truck parks on a street.", "preamble"),
        ("Here is the modified text: A red truck parks on a street.", "preamble"),
        ("Sure! A red truck parks on a street.", "preamble"),
        ('"A red truck parks on a street."', "quotes"),
        ("A red truck parks on a street.\n\nI replaced car with truck.", "extra lines"),
        ("A red truck parks on a road.", "2 different things"),
        ("A blue car parks on a street.", "colour"),
        ("A red car parks on a busy street.", "adds words"),
        ("A red parks on a street.", "deletes words"),
        ("A red big old rusty delivery truck parks on a street.", "5 words long"),
    ],
)
def test_validator_rejects_bad_rewrites_with_a_reason(rewrite, reason_words):
    verdict = check_rewrite("A red car parks on a street.", rewrite)
    assert not verdict.ok
    assert reason_words in verdict.reason


def test_colour_change_is_rejected_by_default_and_allowed_on_request():
    assert "colour" in check_rewrite("a red car", "a blue car").reason
    assert "colour" in check_rewrite("a car", "a red truck").reason  # adding a colour
    verdict = check_rewrite("a red car", "a blue car", RewriteRules(allow_colour_change=True))
    assert verdict.ok and verdict.span.target == "blue"


def test_validator_span_limit_and_single_span_options():
    long_swap = ("a dog on grass", "a big old grey wolf on grass")
    assert not check_rewrite(*long_swap, RewriteRules(max_span_words=3, allow_colour_change=True)).ok
    assert check_rewrite(*long_swap, RewriteRules(max_span_words=4, allow_colour_change=True)).ok
    repeated = ("a dog and the dog", "a fox and the fox")
    assert check_rewrite(*repeated).ok
    assert "places" in check_rewrite(*repeated, RewriteRules(allow_repeated_replacement=False)).reason
    assert split_words("the dog\u2019s close-up.") == ["the", "dog", "\u2019", "s", "close-up", "."]


# ----------------------------------------------------------------------------- store


def test_store_tolerates_and_repairs_a_truncated_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": "cut sho', encoding="utf-8")
    assert read_rows(path) == [{"a": 1}, {"a": 2}]
    with JsonlAppender(path) as appender:
        appender.append({"a": 4})
    assert read_rows(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    # A complete last row that only lacks its newline is kept, not cut.
    path.write_text('{"a": 1}\n{"a": 2}', encoding="utf-8")
    repair_tail(path)
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"a": 2}\n'


def test_store_refuses_a_damaged_middle_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        read_rows(path)


def test_merge_rows_adds_only_new_keys_and_removes_shards(tmp_path):
    target, shard = tmp_path / "out.jsonl", tmp_path / "out.rank1.jsonl"
    target.write_text('{"k": 1}\n', encoding="utf-8")
    shard.write_text('{"k": 1}\n{"k": 2}\n{"k": 2}\n', encoding="utf-8")
    assert merge_rows(target, [shard], key=lambda row: row["k"]) == 1
    assert read_rows(target) == [{"k": 1}, {"k": 2}]
    assert not shard.exists()


# ----------------------------------------------------------------------------- pipeline


def test_tiny_models_end_to_end_accounts_for_every_image_once(tmp_path, tiny_models):
    llava, llama = tiny_models
    names = make_images(tmp_path / "imgs", 5, unreadable=("broken.png",))
    out = tmp_path / "out" / "pairs.jsonl"
    out.parent.mkdir()
    rejects = out.with_name("pairs.rejects.jsonl")

    assert cap.main(tiny_args(tmp_path / "imgs", out, llava, llama, "--yaml", str(tmp_path / "out" / "e.yaml"))) == 0

    accounted = image_names_in(out, rejects)
    assert sorted(accounted) == sorted(names)  # each image exactly once, in one of the files
    reject_rows = read_rows(rejects)
    assert all(row["reason"] and row["stage"] in {"read", "caption", "rewrite"} for row in reject_rows)
    assert {row["image_name"]: row["stage"] for row in reject_rows}["broken.png"] == "read"
    for row in reject_rows:
        if row["stage"] == "rewrite":
            assert len(row["attempts"]) == 2  # first try + --max-retries 1
            assert [a["seed"] for a in row["attempts"]] == [0, 1]
    for row in read_rows(out):  # random models rarely manage, but anything written must be valid
        assert check_rewrite(row["source_prompt"], row["target_prompt"]).ok
    cache = read_rows(out.with_name("pairs.stage1-captions.jsonl"))
    assert sorted(row["image_name"] for row in cache) == sorted(n for n in names if n != "broken.png")
    assert all(row["captioner"] == str(llava) and row["prompt"] == prompts.CAPTION_PROMPT for row in cache)

    # A rerun finds everything done and writes nothing twice.
    before = out.read_bytes(), rejects.read_bytes()
    cap.main(tiny_args(tmp_path / "imgs", out, llava, llama))
    assert (out.read_bytes(), rejects.read_bytes()) == before


def test_accept_path_with_injected_rewriter_into_jsonl_and_yaml(tmp_path, tiny_models):
    llava, llama = tiny_models
    make_images(tmp_path / "imgs", 4)
    out, edits = tmp_path / "pairs.jsonl", tmp_path / "edits.yaml"
    config = cap.config_from_args(cap.parse_args(tiny_args(tmp_path / "imgs", out, llava, llama, "--yaml", str(edits))))
    rewriter = FirstWordSwap()

    summary = cap.run_pipeline(config, rewriter=rewriter)  # real tiny LLaVA, injected rewriter

    rows = read_rows(out)
    caption_rejects = [r for r in read_rows(config.rejects_path) if r["stage"] == "caption"]
    assert len(rows) + len(caption_rejects) == 4 and len(rows) >= 1
    assert summary.written == len(rows)
    assert rewriter.seeds and set(rewriter.seeds) == {config.seed}  # valid at the first attempt
    for row in rows:
        size = Image.open(row["image"]).size
        assert row["image_size"] == list(size)
        assert row["target_prompt"] == FirstWordSwap()([row["source_prompt"]], 0)[0]
        assert row["changed_span"]["target"] == "zebra" and row["changed_span"]["occurrences"] == 1
        assert row["models"] == {"captioner": str(llava), "rewriter": "test/first-word-swap"}
        assert row["generation"]["rewriter"]["seed"] == 0
        assert row["generation"]["rewriter"]["attempt"] == 0
        assert row["generation"]["captioner"]["prompt"] == prompts.CAPTION_PROMPT
        assert row["generation"]["captioner"]["max_new_tokens"] == 10
        assert len(row["image_sha256"]) == 64

    entries = yaml.safe_load(edits.read_text(encoding="utf-8"))
    assert isinstance(entries, list) and len(entries) == len(rows)
    for entry, row in zip(entries, rows):
        assert set(entry) == {"input_img", "source_prompt", "target_prompts", "target_codes"}
        assert entry["input_img"] == row["image"] and Path(entry["input_img"]).exists()
        assert entry["source_prompt"] == row["source_prompt"]
        assert entry["target_prompts"] == [row["target_prompt"]]
        assert entry["target_codes"] == ["zebra"]


def test_failed_rewrites_are_retried_with_new_seeds_then_rejected(tmp_path):
    make_images(tmp_path / "imgs", 3)
    out = tmp_path / "pairs.jsonl"
    config = cap.CaptionConfig(images=tmp_path / "imgs", out=out, max_retries=2, seed=10, progress=False)
    calls = []

    def picky(captions, seed):  # valid only at the third seed, and only for img_00
        calls.append((len(captions), seed))
        good = "A wooden canoe floats on a calm lake near a tall tree."
        return [good if seed == 12 and i == 0 else f"Output: {c}" for i, c in enumerate(captions)]

    cap.run_pipeline(config, captioner=FixedCaptioner(), rewriter=picky)

    assert calls == [(3, 10), (3, 11), (3, 12)]  # only still-failing captions are retried
    (row,) = read_rows(out)
    assert row["image_name"] == "img_00.png"
    assert row["generation"]["rewriter"]["seed"] == 12 and row["generation"]["rewriter"]["attempt"] == 2
    assert row["changed_span"] == {"source": "boat", "target": "canoe", "occurrences": 1, "source_word_index": 2}
    rejects = read_rows(config.rejects_path)
    assert sorted(r["image_name"] for r in rejects) == ["img_01.png", "img_02.png"]
    for reject in rejects:
        assert reject["stage"] == "rewrite" and "3 attempts" in reject["reason"]
        assert [a["seed"] for a in reject["attempts"]] == [10, 11, 12]
        assert all("preamble" in a["reason"] for a in reject["attempts"])
        assert reject["source_prompt"] == FixedCaptioner().text


def test_crash_in_stage_two_keeps_stage_one_captions(tmp_path):
    make_images(tmp_path / "imgs", 4)
    config = cap.CaptionConfig(images=tmp_path / "imgs", out=tmp_path / "pairs.jsonl", batch_size=2, progress=False)

    def broken_rewriter(captions, seed):
        raise RuntimeError("GPU fell off the bus")

    first = FixedCaptioner()
    with pytest.raises(RuntimeError, match="bus"):
        cap.run_pipeline(config, captioner=first, rewriter=broken_rewriter)
    assert first.seen == 4
    assert len(read_rows(config.caption_cache_path)) == 4

    second = FixedCaptioner()
    cap.run_pipeline(config, captioner=second, rewriter=FirstWordSwap())
    assert second.seen == 0  # captions came from the stage-1 cache
    assert sorted(image_names_in(config.out)) == [f"img_{i:02d}.png" for i in range(4)]


def test_empty_caption_is_rejected_and_not_cached(tmp_path):
    make_images(tmp_path / "imgs", 2)
    config = cap.CaptionConfig(images=tmp_path / "imgs", out=tmp_path / "pairs.jsonl", progress=False)
    cap.run_pipeline(config, captioner=lambda images: ["  ", "A boat on a lake."][: len(images)],
                     rewriter=FirstWordSwap())
    (reject,) = read_rows(config.rejects_path)
    assert (reject["image_name"], reject["stage"]) == ("img_00.png", "caption")
    assert "empty caption" in reject["reason"]
    assert image_names_in(config.caption_cache_path) == ["img_01.png"]
    assert image_names_in(config.out) == ["img_01.png"]


def test_retry_rejects_reprocesses_only_rejected_images(tmp_path):
    make_images(tmp_path / "imgs", 3)
    config = cap.CaptionConfig(images=tmp_path / "imgs", out=tmp_path / "pairs.jsonl", max_retries=0, progress=False)
    cap.run_pipeline(config, captioner=FixedCaptioner(), rewriter=lambda caps, seed: ["Sure! " + c for c in caps])
    assert len(read_rows(config.rejects_path)) == 3
    config.retry_rejects = True
    cap.run_pipeline(config, captioner=FixedCaptioner(), rewriter=FirstWordSwap())
    assert len(read_rows(config.out)) == 3 and read_rows(config.rejects_path) == []


def test_cat2dog_preset_needs_no_models(tmp_path):
    names = make_images(tmp_path / "cats", 3, unreadable=("torn.jpg",))
    out = tmp_path / "cat2dog.jsonl"
    cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "cats"), "--out", str(out), "--no-progress",
              "--yaml", str(tmp_path / "cat2dog.yaml")])
    rows = read_rows(out)
    assert [r["image_name"] for r in rows] == names[:3]
    assert {(r["source_prompt"], r["target_prompt"]) for r in rows} == {("a photo of a cat", "a photo of a dog")}
    assert rows[0]["changed_span"]["source"] == "cat" and rows[0]["changed_span"]["target"] == "dog"
    assert [r["image_name"] for r in read_rows(out.with_name("cat2dog.rejects.jsonl"))] == ["torn.jpg"]
    entries = yaml.safe_load((tmp_path / "cat2dog.yaml").read_text())
    assert [e["target_prompts"] for e in entries] == [["a photo of a dog"]] * 3


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    names = make_images(tmp_path / "cats", 8, unreadable=("broken.png",))
    out = tmp_path / "pairs.jsonl"
    common = ["--preset", "cat2dog", "--images", str(tmp_path / "cats"), "--out", str(out), "--no-progress"]
    env = {**os.environ, CRASH_AFTER_ROWS_ENV: "4"}

    crashed = subprocess.run([sys.executable, str(REPO_ROOT / "data_prep" / "caption.py"), *common],
                             env=env, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    done_before = image_names_in(out, out.with_name("pairs.rejects.jsonl"))
    assert len(done_before) == 4
    # The crash also cut a row in half (as a kill during write would).
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"image": "x", "image_name": "img_07.png", "image_sha')

    del env[CRASH_AFTER_ROWS_ENV]
    resumed = subprocess.run([sys.executable, "-m", "data_prep.caption", *common],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 of 9 images already done" in resumed.stderr
    rows, rejects = read_rows(out), read_rows(out.with_name("pairs.rejects.jsonl"))
    assert sorted(r["image_name"] for r in rows + rejects) == sorted(names)  # all, once
    assert [r["image_name"] for r in rejects] == ["broken.png"]
    assert all(line.strip() and json.loads(line) for line in out.read_text().splitlines())


class ThreadedProcessState:
    """Stand-in for ``accelerate.PartialState`` with N processes as threads: a barrier for
    ``wait_for_everyone`` and accelerate's contiguous split."""

    def __init__(self, index: int, count: int, barrier: threading.Barrier):
        self.process_index, self.num_processes, self._barrier = index, count, barrier
        self.is_main_process = index == 0

    def wait_for_everyone(self):
        self._barrier.wait(timeout=30)

    @contextmanager
    def split_between_processes(self, inputs):
        per, extra = divmod(len(inputs), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        yield inputs[start : start + per + (1 if self.process_index < extra else 0)]


def test_several_processes_write_shards_that_merge_without_duplicates(tmp_path):
    names = make_images(tmp_path / "imgs", 7)
    config = cap.CaptionConfig(images=tmp_path / "imgs", out=tmp_path / "pairs.jsonl", batch_size=2, progress=False)
    # A previous run already did img_01 (so it must not be redone by any process).
    cap.run_pipeline(cap.CaptionConfig(**{**config.__dict__, "limit": 2}), captioner=FixedCaptioner(),
                     rewriter=FirstWordSwap())
    barrier, errors, summaries = threading.Barrier(2), [], {}

    def worker(rank):
        try:
            summaries[rank] = cap.run_pipeline(config, captioner=FixedCaptioner(), rewriter=FirstWordSwap(),
                                               process_state=ThreadedProcessState(rank, 2, barrier))
        except BaseException as error:  # surfaced below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(image_names_in(config.out)) == names
    assert summaries[0].already_done + summaries[1].already_done == 2
    assert summaries[0].written + summaries[1].written == 5
    assert summaries[0].out_rows_total == 7
    leftovers = [p.name for p in tmp_path.iterdir() if re.search(r"\.rank\d+\.jsonl$", p.name)]
    assert leftovers == []
    assert len(read_rows(config.caption_cache_path)) == 7


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_processes_split_images_through_accelerate_partial_state(tmp_path):
    """Two real processes set up the way `accelerate launch` / torchrun set them up
    (WORLD_SIZE, RANK, ...; gloo on CPU): accelerate.PartialState splits the images, each
    process writes its shard, the main one merges; nothing is done twice. (Catches
    PartialState silently ignoring the launcher, as it does on CUDA-less machines unless
    told cpu=True.)"""
    names = make_images(tmp_path / "cats", 6, unreadable=("broken.png",))
    out = tmp_path / "pairs.jsonl"
    command = [sys.executable, str(REPO_ROOT / "data_prep" / "caption.py"), "--preset", "cat2dog",
               "--images", str(tmp_path / "cats"), "--out", str(out), "--no-progress"]
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    ranks = [
        subprocess.Popen(command, env={**base_env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sorted(image_names_in(out, out.with_name("pairs.rejects.jsonl"))) == sorted(names)
    main_log = outputs[0][1]
    assert "(this process)" in main_log and "now has 6 pairs" in main_log
    assert not list(tmp_path.glob("*.rank*.jsonl"))


def test_export_yaml_subcommand(tmp_path):
    make_images(tmp_path / "cats", 2)
    out = tmp_path / "c.jsonl"
    cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "cats"), "--out", str(out), "--no-progress"])
    assert cap.main(["export-yaml", "--jsonl", str(out), "--yaml", str(tmp_path / "e.yaml")]) == 0
    entries = yaml.safe_load((tmp_path / "e.yaml").read_text())
    assert [e["input_img"] for e in entries] == [r["image"] for r in read_rows(out)]


# ----------------------------------------------------------------------------- errors


def test_clear_errors_for_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    make_images(tmp_path / "imgs", 1)
    with pytest.raises(SystemExit, match="no images"):
        cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o.jsonl")])
    with pytest.raises(SystemExit, match="no such folder"):
        cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o.jsonl")])
    with pytest.raises(SystemExit, match=r"does not exist; create it first \(mkdir -p"):
        cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "imgs"),
                  "--out", str(tmp_path / "missing" / "o.jsonl")])
    with pytest.raises(SystemExit, match="is a folder"):
        cap.main(["--preset", "cat2dog", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs")])
    with pytest.raises(SystemExit, match="no such file"):
        cap.main(["export-yaml", "--jsonl", str(tmp_path / "none.jsonl"), "--yaml", str(tmp_path / "e.yaml")])
    with pytest.raises(ValueError, match="preset"):
        cap.run_pipeline(cap.CaptionConfig(images=tmp_path / "imgs", out=tmp_path / "o.jsonl", preset="dog2cat"))
    with pytest.raises(SystemExit):  # argparse: --batch-size must be >= 1
        cap.parse_args(["--images", "x", "--out", "y", "--batch-size", "0"])


def test_device_dtype_and_4bit_are_resolved_with_clear_messages(tmp_path, tiny_models):
    import torch

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(SystemExit, match="not a device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            resolve_device("cuda")
        llava, llama = tiny_models
        make_images(tmp_path / "imgs", 1)
        with pytest.raises(SystemExit, match="--load-in-4bit needs a CUDA GPU"):
            cap.main(tiny_args(tmp_path / "imgs", tmp_path / "o.jsonl", llava, llama, "--load-in-4bit"))


def test_list_images_skips_hidden_files_and_folders(tmp_path):
    make_images(tmp_path / "imgs", 2)
    names = [item.name for item in list_images(tmp_path / "imgs")]
    (tmp_path / "imgs" / ".a.png.tmp-x1.png").write_bytes(b"half-written")  # a killed atomic write
    (tmp_path / "imgs" / ".thumbs").mkdir()
    (tmp_path / "imgs" / ".thumbs" / "t.png").write_bytes(b"x")
    assert [item.name for item in list_images(tmp_path / "imgs")] == names and len(names) == 2


def test_a_folder_of_edits_lists_its_pictures_not_the_results_and_masks(tmp_path):
    # the README tour captions assets/examples/shapes-sd3, which also holds precomputed results and masks
    from data_prep.images import list_images
    from softrepa.images import EDIT_METADATA_KEY, write_png

    picture = Image.new("RGB", (16, 16), (10, 200, 30))
    picture.save(tmp_path / "cat.png")
    picture.save(tmp_path / "cat.jpg")
    write_png(picture, tmp_path / "cat__with_tokens.png", {"params": {}}, key=EDIT_METADATA_KEY)  # an edit's result
    write_png(picture, tmp_path / "plain-metadata.png", {"prompt": "a cat"}, key="parameters")  # softrepa.generate's
    Image.new("L", (16, 16), 255).save(tmp_path / "cat__with_tokens.mask.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "cat__with_tokens.region.png")
    assert [item.name for item in list_images(tmp_path)] == ["cat.jpg", "cat.png", "plain-metadata.png"]
