"""``python -m editing``: arguments, batch files, resume, output names, PNG metadata."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editing import cli
from editing.editor import METADATA_KEY, FlowEditor, read_png_metadata
from editing.flowedit import FlowEditParams
from softrepa.images import write_png
from softrepa.tiny import tiny_sd3_pipeline
from softrepa.tokens import file_sha256, new_tokens, save_tokens

FAST = ["--steps", "6", "--n-max", "3", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny SD3 pipeline saved in diffusers format, a token file and a few pictures."""
    root = tmp_path_factory.mktemp("edit-cli")
    pipe = tiny_sd3_pipeline()
    pipe.save_pretrained(root / "model")
    torch.manual_seed(0)
    save_tokens(new_tokens(pipe, "sd3", num_layers=2), root / "tokens.safetensors")
    images = root / "images"
    images.mkdir()
    for k in range(2):
        rng = np.random.RandomState(k)
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(images / f"pic{k}.png")
    (images / "notes.png").write_text("not a picture")
    yield {"root": root, "pipe": pipe, "model": str(root / "model"), "tokens": root / "tokens.safetensors",
           "images": images}


def test_parse_args_and_params(workspace):
    with pytest.raises(SystemExit):
        cli.parse_args(["--image", "a.png", "--source", "a cat"])  # no target
    with pytest.raises(SystemExit):
        cli.parse_args(["--batch", "b.yaml", "--image", "a.png"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--batch", "b.yaml", "--tokens", "t.safetensors", "--no-tokens"])
    args = cli.parse_args(["--batch", "b.yaml", "--tar-cfg", "11", "--n-min", "2"])
    params = cli.params_from_args(args, "sd3", use_tokens=True)  # default preset with tokens: sd3-tokens
    assert (params.n_max, params.tar_cfg, params.n_min, params.steps) == (30, 11.0, 2, 50)
    args = cli.parse_args(["--batch", "b.yaml", "--preset", "sd3-tokens-paper", "--seed", "7"])
    params = cli.params_from_args(args, "sd3", use_tokens=False)
    assert (params.guidance, params.tar_cfg, params.seed) == ("authors", 9.0, 7)
    with pytest.raises(ValueError, match="n_min"):
        cli.params_from_args(cli.parse_args(["--batch", "b.yaml", "--n-min", "40"]), "sd3", False)
    # --dtype auto: float32 on a CPU; on a GPU the model card's dtype (FLUX.1 overflows float16)
    assert cli.model_dtype("auto", torch.device("cpu"), "flux-dev") == torch.float32
    assert cli.model_dtype("auto", torch.device("cuda"), "sd3") == torch.float16
    assert cli.model_dtype("auto", torch.device("cuda"), "flux-dev") == torch.bfloat16
    assert cli.model_dtype("auto", torch.device("cuda"), "sd3.5-large") == torch.bfloat16
    assert cli.model_dtype("float16", torch.device("cuda"), "flux-dev") == torch.float16  # asked for: as asked


def test_single_edit_metadata_and_resume(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", workspace["model"], "--image", str(workspace["images"] / "pic0.png"), "--source", "a cat",
            "--target", "a dog", "--tokens", str(workspace["tokens"]), "--out", str(out), *FAST]
    assert cli.main(argv) == 0
    (written,) = out.glob("*.png")
    assert written.name.startswith("pic0__a_dog-") and written.name.endswith("__tokens.png")
    meta = read_png_metadata(written)
    assert meta["source_prompt"] == "a cat" and meta["target_prompt"] == "a dog" and meta["use_tokens"]
    assert meta["tokens"]["sha256"] == file_sha256(workspace["tokens"])
    assert FlowEditParams.from_dict(meta["params"]) == FlowEditParams(steps=6, n_max=3, tar_cfg=10.0, src_cfg=3.5)
    assert meta["model"] == workspace["model"] and meta["input_image"].endswith("pic0.png")
    stamp = written.stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(argv) == 0  # resume: the output exists, nothing is loaded or redone
    assert "nothing to do" in capsys.readouterr().out and written.stat().st_mtime_ns == stamp


def test_batch_yaml_reports_bad_rows_and_continues(workspace, tmp_path, capsys):
    batch = tmp_path / "edits.yaml"
    (tmp_path / "example_images").mkdir()
    Image.open(workspace["images"] / "pic1.png").save(tmp_path / "example_images" / "bear.png")
    batch.write_text(
        "- input_img: example_images/bear.png\n"           # line 1: relative to the batch file
        "  source_prompt: a bear\n"
        "  target_prompts:\n"
        "    - a lion\n"
        "    - a panda\n"
        "  target_codes: [lion, ../../../escape]\n"
        "- init_img: " + str(workspace["images"] / "pic0.png") + "\n"  # line 7
        "  target_prompts: [a dog]\n"                                   # no source_prompt
        "- input_img: " + str(workspace["images"] / "notes.png") + "\n"  # line 9: not an image
        "  source_prompt: a note\n"
        "  target_prompts: [a letter]\n")
    out = tmp_path / "out"
    code = cli.main(["--model", workspace["model"], "--batch", str(batch), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{batch}:7: 'source_prompt' must be a non-empty string" in captured.err
    assert f"{batch}:9:" in captured.err and "not an image" in captured.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bear__escape.png", "bear__lion.png"]  # the code's path parts are flattened
    assert not list(tmp_path.parent.glob("escape*"))
    meta = read_png_metadata(out / "bear__lion.png")
    assert meta["use_tokens"] is False and meta["tokens"] is None and meta["params"]["n_max"] == 3


def test_read_batch_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("- input_img: a.png\n  source_prompt: [unclosed\n")
    jobs, errors = cli.read_batch(broken)
    assert jobs == [] and errors[0].startswith(f"{broken}:") and "not valid YAML" in errors[0]
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"image": "a.png", "source_prompt": "a cat", "target_prompt": "a dog"}\n'
                    "{not json\n"
                    "\n"
                    '{"image": "b.png", "source_prompt": "a cat"}\n'
                    '["a list"]\n'
                    '{"image": "c.png", "source_prompt": "x", "target_prompt": "y", "id": "../c"}\n')
    jobs, errors = cli.read_batch(rows)
    assert [j.origin for j in jobs] == [f"{rows}:1", f"{rows}:6"]
    assert [e.split(": ")[0] for e in errors] == [f"{rows}:2", f"{rows}:4", f"{rows}:5"]
    assert "target_prompt" in errors[1]
    assert jobs[1].name == "c__c"
    assert cli.read_batch(tmp_path / "none.yaml")[1] and cli.read_batch(rows.with_suffix(".txt"))[1]


def test_jsonl_batch_runs_with_cache_and_skips_existing(workspace, tmp_path):
    rows = tmp_path / "pairs.jsonl"
    pic = str(workspace["images"] / "pic0.png")
    rows.write_text("".join(json.dumps({"image": pic, "source_prompt": "a cat", "target_prompt": t}) + "\n"
                            for t in ("a dog", "a fox", "a dog")))
    jobs, errors = cli.read_batch(rows)
    jobs, outputs, plan_errors = cli.plan_outputs(jobs, tmp_path / "out", False, single_file=False)
    assert errors == [] and len(jobs) == 2 and f"{rows}:3" in plan_errors[0]  # duplicate output
    editor = FlowEditor(workspace["pipe"])
    params = FlowEditParams(steps=6, n_max=3)
    messages = []
    summary = cli.run_jobs(editor, jobs, params, False, outputs, log=lambda *a, **k: messages.append(" ".join(a)))
    assert (summary.done, summary.failed) == (2, 0) and all(p.exists() for p in outputs)
    assert editor.cache_info()["sources"] == 1  # the second target reused the source
    summary = cli.run_jobs(editor, jobs, params, False, outputs, log=lambda *a, **k: None)
    assert (summary.done, summary.skipped) == (0, 2)


def test_names_stay_inside_the_output_folder(tmp_path):
    for hostile in ("../../etc/passwd", "/abs/path", "..", "", "a/../../b", "C:\\x\\y", "\u00e9t\u00e9 \u2603"):
        path = cli.output_path(tmp_path, hostile)
        assert path.parent == tmp_path and path.suffix == ".png" and not path.name.startswith(".")
    assert cli.safe_name("") == "edit"
    assert cli.job_name(Path("x/../pic.png"), "a dog", "../up") == "pic__up"


def test_png_metadata_round_trip(tmp_path):
    data = {"source_prompt": "un caf\u00e9 \u2615", "params": FlowEditParams().to_dict(), "tokens": None}
    # EditResult.save's layout: one JSON text under METADATA_KEY
    path = write_png(Image.new("RGB", (8, 8)), tmp_path / "sub" / "x.png", data, key=METADATA_KEY)
    assert read_png_metadata(path) == data
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no 'softrepa_edit' metadata"):
        read_png_metadata(tmp_path / "plain.png")


def test_bad_parameters_name_their_flag_before_the_model_loads(workspace, tmp_path, capsys):
    # n_max = 0 is refused by FlowEditParams.check, as in the library and the app
    argv = ["--model", str(tmp_path / "no-model-needed"), "--image", str(workspace["images"] / "pic0.png"),
            "--source", "a cat", "--target", "a dog", "--out", str(tmp_path / "out"), *FAST, "--n-max", "0"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "error: --n-max: n_max must be at least 1" in error and "returns the input unchanged" in error
    assert cli.flag_of("n_min") == "--n-min" and cli.flag_of("src_negative_prompt") == "--src-negative"


def test_the_token_file_is_read_and_hashed_once(workspace, tmp_path, monkeypatch):
    import softrepa.tokens
    from editing import token_file

    reads, hashes = [], []
    read, sha256 = softrepa.tokens.read_token_file, token_file.file_sha256
    monkeypatch.setattr(softrepa.tokens, "read_token_file", lambda path: reads.append(path) or read(path))
    monkeypatch.setattr(token_file, "file_sha256", lambda path: hashes.append(path) or sha256(path))
    out = tmp_path / "edit.png"
    argv = ["--model", workspace["model"], "--image", str(workspace["images"] / "pic1.png"), "--source", "a cat",
            "--target", "a dog", "--tokens", str(workspace["tokens"]), "--out", str(out), *FAST]
    assert cli.main(argv) == 0  # no --kind: the kind, the tokens and the sha256 all come from one read
    assert len(reads) == len(hashes) == 1
    assert read_png_metadata(out)["tokens"]["sha256"] == sha256(workspace["tokens"])


def _mask_file(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (32, 32)) -> Path:
    values = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    values[top:bottom, left:right] = 255
    Image.fromarray(values, mode="L").save(path)
    return path


def test_single_edit_with_a_mask_and_auto_mask(workspace, tmp_path, capsys):
    image = workspace["images"] / "pic0.png"
    mask = _mask_file(tmp_path / "m.png", (0, 0, 16, 32))  # the left half
    base = ["--image", str(image), "--source", "a red circle", "--target", "a blue square",
            "--model", workspace["model"], *FAST]
    assert cli.main([*base, "--mask", str(mask), "--out", str(tmp_path / "masked.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "masked.png"))
    assert np.array_equal(out[:, 16:], np.asarray(Image.open(image))[:, 16:])  # the right half is the input's
    assert (tmp_path / "masked.mask.png").is_file()
    assert read_png_metadata(tmp_path / "masked.png")["input_mask"] == str(mask)
    assert "given mask: 50% of the image, source pasted back outside" in capsys.readouterr().out
    assert cli.main([*base, "--auto-mask", "--out", str(tmp_path / "auto")]) == 0
    written = sorted(p.name for p in (tmp_path / "auto").iterdir())
    assert len(written) == 2 and written[0].endswith("__automask.mask.png") and written[1].endswith("__automask.png")
    assert read_png_metadata(tmp_path / "auto" / written[1])["mask"]["mode"] == "auto"
    with pytest.raises(SystemExit):
        cli.parse_args([*base, "--mask", str(mask), "--auto-mask"])


def test_batch_mask_column_and_bad_masks(workspace, tmp_path, capsys):
    images = workspace["images"]
    _mask_file(tmp_path / "left.png", (0, 0, 16, 32))
    _mask_file(tmp_path / "tall.png", (0, 0, 4, 4), size=(16, 32))  # another shape than the image
    Image.new("L", (32, 32), 0).save(tmp_path / "black.png")
    rows = [{"image": str(images / "pic0.png"), "source_prompt": "a", "target_prompt": "b", "mask": "left.png"},
            {"image": str(images / "pic0.png"), "source_prompt": "a", "target_prompt": "b", "mask": "auto"},
            {"image": str(images / "pic0.png"), "source_prompt": "a", "target_prompt": "b"},
            {"image": str(images / "pic1.png"), "source_prompt": "a", "target_prompt": "b", "mask": "tall.png"},
            {"image": str(images / "pic1.png"), "source_prompt": "a", "target_prompt": "c", "mask": "black.png"},
            {"image": str(images / "pic1.png"), "source_prompt": "a", "target_prompt": "d", "mask": "gone.png"},
            {"image": str(images / "pic1.png"), "source_prompt": "a", "target_prompt": "e", "mask": 3}]
    batch = tmp_path / "rows.jsonl"
    batch.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert cli.main(["--batch", str(batch), "--model", workspace["model"], "--out", str(tmp_path / "out"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "rows.jsonl:4: the mask is 16x32 but the image is 32x32, a different shape" in err
    assert "rows.jsonl:5: the mask is empty" in err
    assert "rows.jsonl:6: mask file" in err and "does not exist" in err
    assert "rows.jsonl:7: 'mask' must be a mask image path" in err
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png") if not p.name.endswith(".mask.png"))
    assert len(names) == 3 and sum(n.endswith("__mask.png") for n in names) == 1
    assert sum(n.endswith("__automask.png") for n in names) == 1


def test_offload_on_the_cpu_is_refused_with_advice(workspace, tmp_path, capsys):
    argv = ["--image", str(workspace["images"] / "pic0.png"), "--source", "a", "--target", "b",
            "--model", workspace["model"], "--out", str(tmp_path), "--offload", "model", *FAST]
    assert cli.main(argv) == 2
    assert "--offload model moves weights between the CPU and a GPU, but the device is the CPU" in capsys.readouterr().err


def test_two_processes_split_a_batch_and_write_what_one_process_writes(workspace, tmp_path):
    """Two real processes set up as `accelerate launch --num_processes 2 -m editing --batch ...` sets
    them up (WORLD_SIZE, RANK, ...; gloo on the CPU): each edits its share into the one folder, a bad row
    fails only itself, the summary counts every process's rows, and the files are byte for byte the
    ones a single process writes."""
    import os
    import socket
    import subprocess
    import sys

    pictures = [workspace["images"] / "pic0.png", workspace["images"] / "pic1.png", tmp_path / "pic2.png"]
    Image.open(pictures[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pictures[2])
    rows = [{"image": str(pictures[k % 3]), "source_prompt": "a red circle",
             "target_prompt": f"a blue square number {k}"} for k in range(6)]
    rows.append({"image": str(workspace["images"] / "notes.png"), "source_prompt": "a", "target_prompt": "b"})
    batch = tmp_path / "rows.jsonl"
    batch.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert cli.main(["--batch", str(batch), "--model", workspace["model"], "--out", str(tmp_path / "one"), *FAST]) == 1

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "editing", "--batch", str(batch), "--model", workspace["model"],
               "--out", str(tmp_path / "two"), *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [1, 1], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    logs = outputs[0][0] + outputs[1][0]
    assert "[process 0] wrote" in logs and "[process 1] wrote" in logs  # both did a share (2 images each)
    assert "done by 2 processes: 6 written, 0 skipped (exist), 1 failed" in outputs[0][0]
    one = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == one and len(one) == 6
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert not list((tmp_path / "two").glob(".softrepa-edit-summary*"))


def test_threads_flag_is_applied_before_the_edit(workspace, tmp_path, monkeypatch):
    """``--threads`` goes through ``softrepa.runtime.apply_threads`` first thing in ``main``; without
    the flag ``SOFTREPA_THREADS`` applies, and without either, auto."""
    applied: list = []

    def record(value):
        applied.append((value, torch.get_num_threads()))
        return real_apply(value)

    real_apply = cli.apply_threads
    monkeypatch.setattr(cli, "apply_threads", record)
    previous = torch.get_num_threads()
    single = ["--image", str(workspace["images"] / "pic0.png"), "--source", "a red circle", "--target",
              "a blue square", "--model", workspace["model"], *FAST]
    try:
        assert cli.main([*single, "--threads", "2", "--out", str(tmp_path / "edit.png")]) == 0
        assert applied == [(2, previous)] and torch.get_num_threads() == 2 and (tmp_path / "edit.png").is_file()
        monkeypatch.setenv("SOFTREPA_THREADS", "1")  # the output exists now: nothing to edit, threads still set
        assert cli.main([*single, "--out", str(tmp_path / "edit.png")]) == 0
        monkeypatch.delenv("SOFTREPA_THREADS")
        assert cli.main([*single, "--out", str(tmp_path / "edit.png")]) == 0
        assert [value for value, _ in applied] == [2, 1, "auto"] and torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(previous)


def test_a_bad_threads_value_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("SOFTREPA_THREADS", "lots")
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--image", "x.png", "--source", "a", "--target", "b"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --threads" in error and "SOFTREPA_THREADS" in error


# ----------------------------------------------------------------------------- batch files as untrusted input


def test_yaml_alias_bombs_and_oversized_files_are_refused_at_once(tmp_path, monkeypatch):
    """A billion laughs (and its merge-key and self-referencing kin) is one message about its own
    entry, in milliseconds; the rows beside it still run. A file over the size or node bound is one
    message saying so."""
    from editing import batch as batch_files

    (tmp_path / "a.png").write_bytes(b"PNG")
    laughs = "".join(f"  l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]\n" for k in range(1, 9))
    merges = "".join(f"  m{k}: &m{k} {{<<: [*m{k - 1}, *m{k - 1}]}}\n" for k in range(1, 30))
    path = tmp_path / "edits.yaml"
    path.write_text("- input_img: a.png\n  source_prompt: a cat\n  target_prompts: [a dog]\n"   # line 1: runs
                    "- l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + laughs +  # line 4
                    "  target_prompts: *l8\n"
                    "- m0: &m0 {k: v}\n" + merges +                                               # line 14
                    "- &self [*self]\n")                                                          # line 44
    started = time.monotonic()
    jobs, errors = cli.read_batch(path)
    assert time.monotonic() - started < 5
    assert [job.origin for job in jobs] == [f"{path}:1"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:4", f"{path}:14", f"{path}:44"]
    assert "more than 10,000 values once its aliases (*name) are expanded" in errors[0]
    assert "contains itself through an alias" in errors[2]
    shared = tmp_path / "shared.yaml"  # one 1 MB string 4,000 times in a refused field: quoted cut short, at once
    shared.write_text("- big: &big " + "x" * 2**20 + "\n  input_img: a.png\n  target_prompts: [a dog]\n"
                      "  source_prompt: {" + ", ".join(f"k{k}: *big" for k in range(4000)) + "}\n")
    started = time.monotonic()
    (message,) = cli.read_batch(shared)[1]
    assert time.monotonic() - started < 5 and len(message) < len(str(shared)) + 200
    assert message.startswith(f"{shared}:1: 'source_prompt' must be a non-empty string, got {{'k0': 'xxx")
    monkeypatch.setattr(batch_files, "MAX_YAML_NODES", 20)
    assert "more than 20 YAML values" in cli.read_batch(path)[1][0] and "write the rows as .jsonl" in cli.read_batch(
        path)[1][0]
    monkeypatch.setattr(batch_files, "MAX_YAML_BYTES", 100)
    assert cli.read_batch(path) == ([], [f"{path}: over 0 MiB, the limit of a .yaml batch (PyYAML holds all of it in "
                                         "memory): split it, or write the rows as .jsonl, which is read line by line"])


def test_every_problem_of_a_row_is_named_and_the_good_rows_still_run(tmp_path, monkeypatch):
    from editing import batch as batch_files

    (tmp_path / "a.png").write_bytes(b"PNG")
    monkeypatch.setattr(batch_files, "MAX_ROW_BYTES", 5000)
    good = {"image": "a.png", "source_prompt": "a cat", "target_prompt": "a dog"}
    data_prep = {**good, "target_prompt": "a fox", "image_sha256": "ab12", "changed_span": {"target": "fox"}}
    lines = [json.dumps(good).encode(),                                                    # 1 runs
             json.dumps({"image": 3, "source_prompt": float("nan"), "target_prompt": "x" * 4001, "id": [1],
                         "n_max": 10, "masks": "m.png", "target_prompts": ["a"]}).encode(),  # 2: seven problems
             b'{"image": "a.png", "source_prompt": "\\ud800", "target_prompt": "b"}',    # 3: a lone surrogate
             b"\xff\xfe not UTF-8",                                                        # 4
             b"[" * 4000,                                                                  # 5: too deep
             json.dumps({**good, "note": "x" * 6000}).encode(),                            # 6: over the line bound
             b"",                                                                          # 7: blank, skipped
             json.dumps(data_prep).encode()]                                               # 8: provenance ignored
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    jobs, errors = cli.read_batch(path)
    assert [job.origin for job in jobs] == [f"{path}:1", f"{path}:8"]
    by_line = {}
    for message in errors:
        by_line.setdefault(int(message.split(":")[1]), []).append(message.split(": ", 1)[1])
    assert sorted(by_line) == [2, 3, 4, 5, 6]
    assert [m.split(" ")[0] for m in by_line[2]] == ["'n_max'", "'masks'", "'target_prompts'", "'image'",
                                                     "'source_prompt'", "'target_prompt'", "'id'"]
    assert "every row runs with the command's settings" in by_line[2][0] and "did you mean 'mask'" in by_line[2][1]
    assert "got nan: write the prompt as quoted text" in by_line[2][4]
    assert "4,001 characters long, over the limit of 4,000" in by_line[2][5]
    assert by_line[3] == ["'source_prompt' holds '\\ud800', half of a UTF-16 pair, which is not text: fix the "
                          "file's encoding (write it as UTF-8)"]
    assert by_line[4][0].startswith("not UTF-8 text (byte 0xff at column 1)")
    assert "nested deeper than Python can read" in by_line[5][0] and "the line is over 4 kB" in by_line[6][0]


def test_missing_files_folders_and_impossible_paths_are_messages(tmp_path):
    (tmp_path / "a.png").write_bytes(b"PNG")
    (tmp_path / "folder.png").mkdir()
    rows = [{"image": "folder.png"}, {"image": "x" * 300}, {"image": "~nobody-here/a.png"},
            {"image": "a.png", "mask": "gone.png"}, {"image": "a\x00.png"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"source_prompt": "a", "target_prompt": f"b{k}", **row}) + "\n"
                            for k, row in enumerate(rows)))
    args = cli.parse_args(["--batch", str(path), "--out", str(tmp_path / "out")])
    jobs, _, errors = cli.plan_jobs(args, use_tokens=False, log=print)
    errors = [message.split(":", 1)[1] for message in sorted(errors, key=lambda e: int(e.split(":")[1]))]
    assert jobs == [] and len(errors) == 5
    assert errors[0].startswith("1: image file") and errors[0].endswith("is a folder, not a file")
    assert errors[1].startswith("2: 'image' is not a usable path (File name too long): give the image file's path")
    assert errors[2] == "3: 'image' is not a usable path (Could not determine home directory.): give the image file's path"
    assert errors[3].startswith("4: mask file") and errors[3].endswith("gone.png does not exist")
    assert errors[4].startswith("5: 'image' holds a NUL character")


def test_a_batch_with_nothing_to_run_exits_1_before_any_model_loads(tmp_path, capsys):
    for name, text in (("empty.yaml", ""), ("none.yaml", "[]\n"), ("blank.jsonl", "\n\n"),
                       ("bad.jsonl", '{"image": null}\n'), ("map.yaml", "input_img: a.png\n")):
        (tmp_path / name).write_text(text)
        argv = ["--batch", str(tmp_path / name), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]
        assert cli.main(argv) == 1, name
        assert f"{tmp_path / name}" in capsys.readouterr().err
    assert cli.read_batch(tmp_path / "none.yaml")[1] == [f"{tmp_path / 'none.yaml'}: the file holds no edits: give "
                                                          "at least one (docs/editing.md, Batch files)"]


def test_token_files_with_bad_metadata_are_named_before_the_model_loads(workspace, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(workspace["tokens"]))
    config = json.loads(safe_metadata(workspace["tokens"])["softrepa_tokens"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"softrepa_tokens": json.dumps({**config, "num_layers": -1}),
                                           "format_version": "1"})
    argv = ["--model", str(tmp_path / "no-model"), "--image", str(workspace["images"] / "pic0.png"), "--source", "a",
            "--target", "b", "--tokens", str(bad), "--out", str(tmp_path / "out"), *FAST]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert (f"error: {bad}: metadata 'softrepa_tokens', field 'num_layers': num_layers must be a whole number >= 1, "
            "got -1. The file is damaged") in error and "Traceback" not in error


def safe_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_auto_keeps_the_picked_candidate_and_replays_it_with_its_flags(workspace, clip_dir, tmp_path, capsys):
    base = ["--model", workspace["model"], "--image", str(workspace["images"] / "pic0.png"), "--source", "a cat",
            "--target", "a dog", "--tokens", str(workspace["tokens"]), *FAST]
    assert cli.main([*base, "--auto", "--auto-strengths", "2", "3", "--auto-tokens", "--scorer", str(clip_dir),
                     "--out", str(tmp_path / "auto")]) == 0
    (written,) = (tmp_path / "auto").glob("*.png")
    assert written.name.endswith("__tokens__auto.png")
    meta = read_png_metadata(written)
    rows, picked = meta["auto"]["candidates"], meta["auto"]["picked"]
    assert len(rows) == 4 and rows[picked]["picked"] and meta["auto"]["tokens_won"] == meta["use_tokens"]
    log = capsys.readouterr().out
    assert "auto: 4 candidates" in log and f"the tokens {'won' if meta['use_tokens'] else 'lost'}" in log
    params = FlowEditParams.from_dict(meta["params"])  # the pick, replayed by its own flags
    tokens = ["--tokens", str(workspace["tokens"])] if meta["use_tokens"] else []
    replay = [*base[:-len(FAST) - 2], *tokens, *FAST, "--n-max", str(params.n_max), "--tar-cfg", str(params.tar_cfg),
              "--noise-offset", str(params.noise_offset), "--out", str(tmp_path / "replay.png")]
    assert cli.main(replay) == 0
    assert read_png_metadata(tmp_path / "replay.png")["params"] == meta["params"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "replay.png")), np.asarray(Image.open(written)))


def test_auto_flags_without_auto_or_that_cannot_run_are_named(workspace, tmp_path, capsys):
    base = ["--model", workspace["model"], "--image", str(workspace["images"] / "pic0.png"), "--source", "a cat",
            "--target", "a dog", *FAST, "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        cli.parse_args([*base, "--auto-strengths", "2", "3"])
    assert "--auto-strengths sets up the auto-strength sweep: add --auto" in capsys.readouterr().err
    assert cli.main([*base, "--auto", "--auto-strengths", "2", "9"]) == 2
    assert "error: --n-max: n_max is 9 but there are only 6 steps" in capsys.readouterr().err
    assert cli.main([*base, "--auto", "--auto-tokens"]) == 2
    assert "--auto-tokens compares the soft tokens off and on: give --tokens FILE" in capsys.readouterr().err
