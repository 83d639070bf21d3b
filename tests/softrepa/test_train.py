"""Training: data sources, the feature cache, a short run that learns, exact resume, bad data,
non-finite steps, the CLI parser. Tiny random-weight SD3 at 16 px, one CPU thread."""

import dataclasses
import json
import logging
import os

import pytest
import torch
from PIL import Image

from softrepa.batches import BatchSource
from softrepa.cache import FeatureCache, build_cache, encode_latents, encode_prompts, model_fingerprint
from softrepa.data import DatasetError, epoch_order, load_coco, load_image_tensor, open_dataset
from softrepa.hooks import attach_tokens
from softrepa.loss import DiffusionObjective, LossConfig
from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
from softrepa.tiny import tiny_sd3_pipeline
from softrepa.tokens import load_tokens, new_tokens
from softrepa.train import NonFiniteLossError, TrainConfig, evaluate_pairs, parse_args, train

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "black": (0, 0, 0), "green": (0, 255, 0)}


def write_colour_folder(folder, colours=COLOURS, size=(24, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as f:
        for name, rgb in colours.items():
            Image.new("RGB", size, rgb).save(folder / f"{name}.png")
            f.write(json.dumps({"image": f"{name}.png", "caption": f"a {name} image"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline(0)


def base_config(tmp_path, data, **overrides):
    values = dict(model="tiny-sd3", kind="sd3", data=str(data), output=str(tmp_path / "run"),
                  cache_dir=str(tmp_path / "cache"), resolution=16, max_sequence_length=8, batch_size=2,
                  pair_chunk=3, max_steps=6, lr=1e-2, lr_cycle=4, num_layers=2, tau=1.0, scale=100.0,
                  checkpoint_every=2, validate_every=3, val_items=0, validation_prompts=(), val_steps=2,
                  progress=False)
    values.update(overrides)
    return TrainConfig(**values)


# ----------------------------------------------------------------------------- data


def test_image_folder_and_coco_sources(tmp_path, colours):
    folder = open_dataset(colours)
    assert len(folder) == 4 and folder.records[0].captions == ("a red image",)
    csv_folder = tmp_path / "csv"
    csv_folder.mkdir()
    Image.new("RGB", (8, 8)).save(csv_folder / "a.png")
    (csv_folder / "metadata.csv").write_text('file_name,text\na.png,"a black, small image"\nmissing.png,gone\n')
    assert [r.captions for r in open_dataset(csv_folder).records] == [("a black, small image",)]

    images = tmp_path / "train2017"
    images.mkdir()
    for name in ("1.jpg", "2.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    annotations = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"},
                              {"id": 3, "file_name": "missing.jpg"}],
                   "annotations": [{"image_id": 1, "caption": f"cap {k}"} for k in range(5)]
                   + [{"image_id": 2, "caption": "only one"}, {"image_id": 3, "caption": "gone"}]}
    (tmp_path / "captions_train2017.json").write_text(json.dumps(annotations))
    coco = load_coco(images, tmp_path / "captions_train2017.json")
    assert [r.key for r in coco.records] == ["1", "2"]  # the missing file is skipped
    assert len(coco.records[0].captions) == 5
    # one random caption per image per epoch, the same in every run
    per_epoch = [coco.caption(0, seed=0, epoch=e) for e in range(12)]
    assert per_epoch == [coco.caption(0, seed=0, epoch=e) for e in range(12)]
    assert len(set(per_epoch)) > 1
    assert coco.caption(1, seed=0, epoch=3) == "only one"
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1) != epoch_order(10, 0, 2)


def test_bad_data_gives_clear_errors(tmp_path, caplog, pipe):
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco(tmp_path, tmp_path / "captions_val2017.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        open_dataset(empty)
    (empty / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="metadata.jsonl"):
        open_dataset(empty)

    # a corrupt image is logged and skipped; the run goes on with the rest
    folder = write_colour_folder(tmp_path / "mixed", {"red": (255, 0, 0), "blue": (0, 0, 255)})
    (folder / "broken.png").write_text("this is not a png")
    with open(folder / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"image": "broken.png", "caption": "a broken image"}) + "\n")
    dataset = open_dataset(folder)
    cache = FeatureCache(tmp_path / "cache", model_fingerprint(pipe, "tiny"), 16, max_sequence_length=8)
    with caplog.at_level(logging.WARNING):
        report = build_cache(pipe, dataset, cache, "cpu", batch_size=4)
    assert [os.path.basename(p) for p, _ in report.skipped] == ["broken.png"]
    assert "broken.png" in caplog.text and report.encoded_images == 2

    # only unreadable images left: a clear error, not a crash inside the loop
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (only_bad / "metadata.jsonl").write_text(json.dumps({"image": "x.png", "caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match="usable images"):
        train(base_config(tmp_path, only_bad), pipe=pipe)


# ----------------------------------------------------------------------------- cache


def test_cache_files_hold_only_their_item(tmp_path, colours, pipe):
    dataset = open_dataset(colours)
    cache = FeatureCache(tmp_path / "cache", model_fingerprint(pipe, "tiny"), 16, max_sequence_length=8)
    report = build_cache(pipe, dataset, cache, "cpu", batch_size=4)  # one batch of 4: slices would share it
    assert (report.encoded_images, report.encoded_captions) == (4, 4)
    for record in dataset.records:
        latents = cache.load_latents(record)
        assert latents.shape == (4, 8, 8)
        item_bytes = latents.numel() * latents.element_size()
        assert cache.latent_path(record).stat().st_size < item_bytes + 1024  # one item + a small header
        text = cache.load_text(record.captions[0])
        text_bytes = sum(t.numel() * t.element_size() for t in text.values())
        assert text["prompt_embeds"].shape == (77 + 8, 64) and text["pooled_prompt_embeds"].shape == (64,)
        assert cache.text_path(record.captions[0]).stat().st_size < text_bytes + 1024
    # the cached features are what the encoders give for that one item
    red = dataset.records[0]

    direct = encode_latents(pipe.vae, load_image_tensor(red.image, 16)[None])[0]
    assert torch.allclose(cache.load_latents(red), direct, atol=1e-5)
    # reused across runs; another resolution or model is another key
    assert build_cache(pipe, dataset, cache, "cpu").encoded_images == 0
    assert not FeatureCache(tmp_path / "cache", model_fingerprint(pipe, "tiny"), 32).has_latents(red)
    assert model_fingerprint(tiny_sd3_pipeline(1), "tiny") != model_fingerprint(pipe, "tiny")


# ----------------------------------------------------------------------------- training


def _pretrain(pipe, latents, text, steps=30):
    """A few flow-matching steps of the whole tiny transformer on the pairs, so the base model,
    like a real one, knows a little about which caption goes with which image (a random model
    has next to no image-caption interaction for the tokens to sharpen)."""
    transformer = pipe.transformer.train().requires_grad_(True)
    objective = DiffusionObjective("flow")
    optimizer = torch.optim.Adam(transformer.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        noise = draw_noise(latents, objective, generator, per_sample_t=True, per_sample_noise=True)
        pred = transformer(hidden_states=objective.noisy(latents, noise.eps, noise.timesteps),
                           timestep=noise.timesteps.float(), encoder_hidden_states=text["prompt_embeds"],
                           pooled_projections=text["pooled_prompt_embeds"], return_dict=False)[0]
        loss = (pred - objective.target(latents, noise.eps, noise.timesteps)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transformer.eval().requires_grad_(False)


def test_short_run_lowers_loss_and_raises_accuracy(tmp_path, colours):
    pipe = tiny_sd3_pipeline(0)
    dataset = open_dataset(colours)

    with torch.no_grad():
        latents = encode_latents(pipe.vae, torch.stack([load_image_tensor(r.image, 16) for r in dataset.records]))
        text = encode_prompts(pipe, [r.captions[0] for r in dataset.records], "cpu", max_sequence_length=8)
        text = {k: text[k] for k in ("prompt_embeds", "pooled_prompt_embeds")}
    _pretrain(pipe, latents, text)
    batch = PairBatch(latents, text)
    objective, loss_config = DiffusionObjective("flow"), LossConfig(tau=1.0, scale=100.0)

    def evaluate(tokens):  # fixed t and noise: deterministic before/after
        with attach_tokens(pipe, tokens):
            return evaluate_pairs(pipe.transformer, "mmdit", objective, batch, loss_config, (250, 500, 750), seed=1)

    before = evaluate(new_tokens(pipe, "sd3", num_layers=2, init="zeros"))
    config = base_config(tmp_path, colours, batch_size=4, pair_chunk=0, max_steps=40, init="zeros",
                         lr_scheduler="constant", checkpoint_every=100, validate_every=100)
    result = train(config, pipe=pipe)
    after = evaluate(result.tokens)
    assert after["contrastive"] < before["contrastive"] - 0.05, (before, after)
    assert after["accuracy"] > before["accuracy"], (before, after)
    assert result.final_path.is_file() and result.step == 40
    assert all(key in result.history[0] for key in ("loss", "contrastive", "denoising", "accuracy", "lr"))


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, colours, pipe):
    config = base_config(tmp_path, colours, val_items=2, validation_prompts=("a red image", "a cat"),
                         max_grad_norm=1.0)
    full = train(dataclasses.replace(config, output=str(tmp_path / "full")), pipe=pipe)

    killed = train(dataclasses.replace(config, output=str(tmp_path / "killed"), stop_after_step=3), pipe=pipe)
    assert killed.step == 3 and killed.final_path is None  # step 3 is lost: the last checkpoint is step 2
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]
    state = torch.load(tmp_path / "killed/checkpoints/step-00000002/state.pt", weights_only=True)
    assert {"optimizer", "lr_scheduler", "scaler"} <= set(state)
    at_step_2 = load_tokens(tmp_path / "killed/checkpoints/step-00000002/tokens.safetensors")
    resumed = train(dataclasses.replace(config, output=str(tmp_path / "killed"), resume="latest"), pipe=pipe)
    assert resumed.step == 6

    a, b = load_tokens(full.final_path), load_tokens(resumed.final_path)
    assert not torch.equal(a.static, at_step_2.static)  # the tokens did move after the checkpoint
    assert torch.equal(a.static, b.static) and torch.equal(a.time.weight, b.time.weight)
    # same log (minus timings), validation rows and best copy included
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    read = lambda run: strip(json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines())
    assert read("full") == read("killed")
    assert (tmp_path / "killed" / "tokens-best.safetensors").is_file()
    assert (tmp_path / "killed" / "samples" / "step-00000006.png").is_file()
    assert not list((tmp_path / "killed" / "checkpoints").glob(".tmp-*"))


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, colours, pipe, caplog):
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: (output[0] * float("nan"),))
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteLossError, match="2 steps in a row"):
            train(base_config(tmp_path, colours, max_nonfinite=2), pipe=pipe)
    finally:
        handle.remove()
    assert "step skipped" in caplog.text
    assert not pipe.transformer._forward_pre_hooks  # the tokens were detached despite the error


def test_parse_args_maps_flags_to_config():
    config = parse_args(["--data", "shapes/", "--model", "sd15", "--batch-size", "3", "--pair-chunk", "0",
                         "--adam-betas", "0.8", "0.95", "--tau", "0.1", "--dweight", "0", "--no-progress",
                         "--mixed-precision", "bf16", "--resume", "latest", "--validation-prompts", "a", "b",
                         "--compile", "max-autotune-no-cudagraphs"])
    assert config.compile == "max-autotune-no-cudagraphs" and parse_args(["--data", "x"]).compile is None
    assert (config.model, config.batch_size, config.pair_chunk, config.adam_betas) == ("sd15", 3, 0, (0.8, 0.95))
    assert (config.tau, config.dweight, config.progress, config.mixed_precision) == (0.1, 0.0, False, "bf16")
    assert config.validation_prompts == ("a", "b") and config.resume == "latest"
    assert config.loss_config("sd15").dweight == 0.0 and TrainConfig(data="x").loss_config("sd15").dweight == 10.0
    with pytest.raises(ValueError, match="lr_scheduler"):
        TrainConfig(data="x", lr_scheduler="linear")


def test_a_bad_flag_value_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--data", "x", "--compile", "fast"])
    assert exit_.value.code == 2 and "compile must be one of off, default" in capsys.readouterr().err


@pytest.mark.slow  # spawns 3 processes (~50 s)
def test_two_processes_with_gathered_captions_match_one_process(tmp_path, colours):
    """2 processes x 2 images (captions gathered, gradients averaged) == 1 process x 4 images."""
    import subprocess
    import sys

    from softrepa.tiny import save_tiny_pipeline

    model = save_tiny_pipeline("sd3", tmp_path / "tiny-sd3")
    common = ["-m", "softrepa.train", "--model", str(model), "--data", str(colours), "--cache-dir",
              str(tmp_path / "cache"), "--resolution", "16", "--max-sequence-length", "8", "--pair-chunk", "3",
              "--max-steps", "3", "--num-layers", "2", "--tau", "1", "--scale", "100", "--val-items", "0",
              "--validation-prompts", "a", "--val-steps", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run(torchrun + common + ["--batch-size", "2", "--output", str(tmp_path / "two")], env=env, check=True)
    subprocess.run([sys.executable] + common + ["--batch-size", "4", "--output", str(tmp_path / "one")], env=env,
                   check=True)
    two, one = (load_tokens(tmp_path / run / "tokens-final.safetensors") for run in ("two", "one"))
    assert torch.allclose(two.static, one.static, atol=1e-6)
    assert torch.allclose(two.time.weight, one.time.weight, atol=1e-6)
    first = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()][0]
    assert first["contrastive"] == pytest.approx(
        json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[0])["contrastive"], rel=1e-5)


def test_max_minutes_time_box_stops_with_final_files(tmp_path, colours, pipe):
    config = base_config(tmp_path, colours, max_minutes=0.0)
    result = train(config, pipe=pipe)
    assert result.step == 0 and result.final_path.is_file()  # out of time before the first step
    assert load_tokens(result.final_path).static.shape == result.tokens.static.shape
    with pytest.raises(ValueError, match="max_minutes"):
        dataclasses.replace(config, max_minutes=-1.0)


def test_hard_negatives_are_extra_caption_columns(tmp_path, colours, pipe):
    folder = tmp_path / "hard"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for name, rgb in COLOURS.items():
            Image.new("RGB", (24, 20), rgb).save(folder / f"{name}.png")
            others = [other for other in COLOURS if other != name]
            f.write(json.dumps({"image": f"{name}.png", "caption": f"a {name} image",
                                "negative_caption": f"a {others[0]} image"}) + "\n")
    dataset = open_dataset(folder)
    assert dataset.records[0].negatives == ("a blue image",)
    assert "a blue image" in dataset.all_captions() and dataset.negative(0, seed=0, epoch=0) == "a blue image"
    config = base_config(tmp_path, folder, hard_negatives=True, max_steps=2)
    result = train(config, pipe=pipe)
    assert result.step == 2 and result.final_path.is_file()
    # the batch the trainer builds: own captions in columns 0..B-1, their negatives in B..2B-1
    cache = FeatureCache(config.cache_dir, model_fingerprint(pipe, "tiny-sd3"), 16, torch.float32, 8)
    batch = BatchSource(dataset, cache, 0, 16, False, hard_negatives=True).load([0, 2], epoch=0)
    assert batch.num_images == 2 and batch.num_captions == 4
    expected = [dataset.caption(0, 0, 0), dataset.caption(2, 0, 0), dataset.negative(0, 0, 0), dataset.negative(2, 0, 0)]
    for column, caption in enumerate(expected):
        torch.testing.assert_close(batch.text["prompt_embeds"][column], cache.load_text(caption)["prompt_embeds"])
    # a folder without negatives is refused up front, with what to do
    with pytest.raises(DatasetError, match="negative_caption"):
        train(base_config(tmp_path / "plain", colours, hard_negatives=True), pipe=pipe)


def test_compiled_training_equals_eager_and_leaves_the_pipeline_eager(tmp_path, colours, pipe):
    """``compile="default"``: a step's token gradient equals eager's within 1e-5 relative (chunked pairs:
    a no-grad pass, a grad chunk and a smaller last one, all compiled); a run logs the same losses,
    and its tokens agree to 1e-4 (Adam divides by the running gradient size, which magnifies
    last-bit differences where a gradient is near zero); afterwards the blocks are eager again."""
    from torch._dynamo.utils import counters

    from softrepa.compile import compile_denoiser, repeated_blocks, uncompile

    def relative(x, y):
        return ((x - y).abs().max() / x.abs().max()).item()

    config = base_config(tmp_path, colours, max_steps=3, validate_every=10, checkpoint_every=2)
    eager = train(dataclasses.replace(config, output=str(tmp_path / "eager")), pipe=pipe)
    graphs = counters["stats"]["unique_graphs"]
    compiled = train(dataclasses.replace(config, output=str(tmp_path / "compiled"), compile="default"), pipe=pipe)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert all(block._compiled_call_impl is None for block in repeated_blocks(pipe.transformer))
    steps = [(a, b) for a, b in zip(eager.history, compiled.history, strict=True) if "loss" in a]
    assert len(steps) == 3 and all(abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]) for a, b in steps)
    a, b = load_tokens(eager.final_path), load_tokens(compiled.final_path)
    at_step_2 = load_tokens(tmp_path / "eager" / "checkpoints" / "step-00000002" / "tokens.safetensors")
    assert not torch.equal(a.static, at_step_2.static)  # the tokens moved: their agreement means something
    assert relative(a.static, b.static) <= 1e-4 and relative(a.time.weight, b.time.weight) <= 1e-4

    tokens = new_tokens(pipe, "sd3", num_layers=2)
    generator = torch.Generator().manual_seed(0)
    batch = PairBatch(torch.randn(2, 4, 8, 8, generator=generator),
                      {"prompt_embeds": torch.randn(2, 12, 64, generator=generator),
                       "pooled_prompt_embeds": torch.randn(2, 64, generator=generator)})
    noise = draw_noise(batch.latents, DiffusionObjective("flow"), generator)
    grads = []
    with attach_tokens(pipe, tokens):
        for mode in (None, "default"):
            info = compile_denoiser(pipe.transformer, mode)
            tokens.zero_grad(set_to_none=True)
            pair_loss_backward(PairScorer(pipe.transformer, "mmdit", DiffusionObjective("flow"), batch, noise),
                               make_loss_fn(LossConfig(tau=1.0), noise, None), pair_chunk=3)
            grads.append(tokens.static.grad.clone())
    uncompile(pipe.transformer)
    assert info.mode == "default" and relative(grads[0], grads[1]) <= 1e-5
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="fast")
