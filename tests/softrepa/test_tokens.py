"""Soft tokens on tiny SD3 / SD1.5 / SDXL: hooks, Algorithm 1 reference, time bins, gradients, files."""

from __future__ import annotations

import dataclasses
import json
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from softrepa.atomic import TEMP_GLOB
from softrepa.hooks import attach_tokens
from softrepa.models import KINDS, check_compatible
from softrepa.tiny import tiny_pipeline, tiny_sd3_transformer
from softrepa.tokens import (SoftTokens, SoftTokensConfig, count_parameters, init_from_null_prompt, load_tokens,
                             main as tokens_main, new_tokens, save_tokens, timestep_bins, tokens_config_for)


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_pipeline(kind) for kind in ("sd3", "sd15", "sdxl")}


def sd3_inputs(batch=2, seed=0, timestep=None):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    text = torch.randn(batch, 12, 64, generator=g)  # (B, n, joint_attention_dim)
    pooled = torch.randn(batch, 64, generator=g)
    t = torch.tensor([500.0] * batch) if timestep is None else timestep
    return dict(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled, timestep=t)


def unet_inputs(pipe, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = pipe.unet.config.cross_attention_dim
    kwargs = dict(sample=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.tensor(400),
                  encoder_hidden_states=torch.randn(batch, 77, width, generator=g))
    if pipe.unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = dict(text_embeds=torch.randn(batch, 32, generator=g),
                                           time_ids=torch.tensor([[32, 32, 0, 0, 32, 32]] * batch, dtype=torch.float32))
    return kwargs


def sd3_reference(model, tokens: SoftTokens, hidden_states, encoder_hidden_states, pooled_projections, timestep):
    """Algorithm 1 written out: prepend s(k, t) at the first L blocks, drop the m outputs after each."""
    height, width = hidden_states.shape[-2:]
    h_img = model.pos_embed(hidden_states)
    temb = model.time_text_embed(timestep, pooled_projections)
    h_text = model.context_embedder(encoder_hidden_states)
    n = h_text.shape[1]
    for k, block in enumerate(model.transformer_blocks):
        if k < tokens.config.num_layers:
            s = tokens.static[k] + tokens.time.weight[timestep_bins(timestep, 100)][:, k * tokens.config.width:(k + 1) * tokens.config.width, None].transpose(1, 2)
            h_text = torch.cat([s, h_text], dim=1)  # [s; H_text]
        h_text, h_img = block(hidden_states=h_img, encoder_hidden_states=h_text, temb=temb)
        if h_text is not None:
            h_text = h_text[:, -n:]  # drop soft tokens
    h_img = model.proj_out(model.norm_out(h_img, temb))
    p = model.config.patch_size
    h_img = h_img.reshape(h_img.shape[0], height // p, width // p, p, p, model.out_channels)
    h_img = torch.einsum("nhwpqc->nchpwq", h_img)
    return h_img.reshape(h_img.shape[0], model.out_channels, height, width)


def random_tokens(model, kind, seed=1, **overrides):
    torch.manual_seed(seed)
    tokens = new_tokens(model, kind, **overrides)
    with torch.no_grad():  # larger than N(0, .02) so any mistake shows in the outputs
        tokens.static.normal_(std=1.0)
        tokens.time.weight.normal_(std=1.0)
    return tokens


# ----------------------------------------------------------------------------- hooks


def assert_off_and_detached_are_bitwise_vanilla(model, kind: str) -> None:
    """Tokens on change the output; switched off, and after detaching, it is bitwise the bare model's."""
    inputs = sd3_inputs()
    with torch.no_grad():
        vanilla = model(**inputs).sample
        attached = attach_tokens(model, random_tokens(model, kind, num_layers=2))
        on = model(**inputs).sample
        with attached.switch(False):
            off = model(**inputs).sample
        attached.detach()
        after = model(**inputs).sample
    assert not torch.equal(on, vanilla)
    assert torch.equal(off, vanilla)
    assert torch.equal(after, vanilla)
    assert not attached.attached


def test_sd3_detached_and_off_are_bitwise_vanilla(pipes):
    assert_off_and_detached_are_bitwise_vanilla(pipes["sd3"].transformer, "sd3")


def test_sd3_tokens_match_algorithm1_reference(pipes):
    model = pipes["sd3"].transformer
    tokens = random_tokens(model, "sd3", num_layers=2)
    inputs = sd3_inputs(batch=3, timestep=torch.tensor([0.0, 999.7, 1000.0]))
    with torch.no_grad():
        with attach_tokens(model, tokens):
            hooked = model(**inputs).sample
        reference = sd3_reference(model, tokens, **inputs)  # on the bare model
    torch.testing.assert_close(hooked, reference, rtol=1e-5, atol=1e-5)


def test_all_layers_including_last_block(pipes):
    """L = number of blocks: the last block returns no text stream and must still work."""
    model = pipes["sd3"].transformer
    tokens = random_tokens(model, "sd3", num_layers=len(model.transformer_blocks))
    inputs = sd3_inputs()
    with torch.no_grad():
        with attach_tokens(model, tokens):
            hooked = model(**inputs).sample
        torch.testing.assert_close(hooked, sd3_reference(model, tokens, **inputs), rtol=1e-5, atol=1e-5)


def test_time_bins_per_element():
    t = torch.tensor([0.0, 9.99, 10.0, 505.5, 999.0, 999.7, 1000.0, 1200.0, -3.0])
    assert timestep_bins(t, 100).tolist() == [0, 0, 1, 50, 99, 99, 99, 99, 0]
    tokens = SoftTokens(SoftTokensConfig(kind="sd3", num_tokens=2, num_layers=3, width=4))
    out = tokens(1, t[:7])  # (B, m, d)
    assert out.shape == (7, 2, 4)
    expected = tokens.static[1] + tokens.time.weight[timestep_bins(t[:7], 100), 4:8].unsqueeze(1)
    torch.testing.assert_close(out, expected)
    # a scalar timestep broadcasts to the batch
    assert torch.equal(tokens(0, torch.tensor(500.0), batch_size=3), tokens(0, torch.tensor([500.0] * 3)))


def test_mixed_timesteps_in_one_batch_equal_separate_calls(pipes):
    model = pipes["sd3"].transformer
    tokens = random_tokens(model, "sd3", num_layers=2)
    inputs = sd3_inputs(batch=3, timestep=torch.tensor([0.0, 999.7, 1000.0]))
    with torch.no_grad(), attach_tokens(model, tokens):
        batched = model(**inputs).sample
        single = [model(**{k: v[i:i + 1] for k, v in inputs.items()}).sample for i in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_unet_off_bitwise_and_all_groups_equal_text_insertion(pipes, kind):
    unet = pipes[kind].unet
    inputs = unet_inputs(pipes[kind])
    with torch.no_grad():
        vanilla = unet(**inputs).sample
        tokens = random_tokens(unet, kind, block_groups=("down", "mid", "up"))
        with attach_tokens(unet, tokens) as attached:
            on = unet(**inputs).sample
            with attached.switch(False):
                off = unet(**inputs).sample
        # tokens in every cross-attention == the same tokens inserted after BOS in the text itself
        s = tokens(0, inputs["timestep"], batch_size=2)
        text = inputs["encoder_hidden_states"]
        reference = unet(**{**inputs, "encoder_hidden_states": torch.cat([text[:, :1], s, text[:, 1:]], 1)}).sample
        after = unet(**inputs).sample
    assert torch.equal(off, vanilla) and torch.equal(after, vanilla)
    torch.testing.assert_close(on, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_unet_default_groups_leave_up_blocks_alone(pipes, kind):
    unet = pipes[kind].unet
    inputs = unet_inputs(pipes[kind])
    tokens = random_tokens(unet, kind)
    assert tokens.config.block_groups == KINDS[kind].block_groups
    seen = []
    with torch.no_grad(), attach_tokens(unet, tokens):
        # registered after the token hooks, so they see what the cross-attention really receives
        handles = [mod.register_forward_pre_hook(lambda mod, a, kw: seen.append((id(mod), kw["encoder_hidden_states"].shape[1])), with_kwargs=True)
                   for mod in unet.modules() if type(mod).__name__ == "Transformer2DModel"]
        try:
            unet(**inputs)
        finally:
            for h in handles:
                h.remove()
    groups = {"down": unet.down_blocks, "mid": [unet.mid_block], "up": unet.up_blocks}
    hooked = {id(mod) for g in tokens.config.block_groups for block in groups[g] for mod in block.modules()}
    m = tokens.config.num_tokens
    assert {length for key, length in seen if key in hooked} == {77 + m}
    assert {length for key, length in seen if key not in hooked} == {77}  # up blocks (and mid for SD1.5) see plain text


def test_only_tokens_get_gradients(pipes):
    model = pipes["sd3"].transformer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = random_tokens(model, "sd3", num_layers=2)
    model.requires_grad_(False)
    optimizer = torch.optim.AdamW(tokens.parameters(), lr=1e-2)
    static_before = tokens.static.detach().clone()
    with attach_tokens(model, tokens):
        loss = model(**sd3_inputs()).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.parameters())
    assert tokens.static.grad is not None and tokens.static.grad.abs().sum() > 0
    assert tokens.time.weight.grad.abs().sum() > 0
    assert not torch.equal(tokens.static, static_before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.requires_grad_(True)


@pytest.mark.parametrize("kind", ["sd3", "sd15", "sdxl"])
def test_pipelines_call_with_tokens_on_and_off(pipes, kind):
    pipe = pipes[kind]
    overrides = {"num_layers": 2} if kind == "sd3" else {}
    tokens = random_tokens(pipe, kind, **overrides)

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe("a red circle", num_inference_steps=2, generator=generator, output_type="pt",
                    height=32, width=32, guidance_scale=3.0).images

    vanilla = run()
    calls = []
    denoiser = getattr(pipe, KINDS[kind].denoiser_attr)
    handle = denoiser.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("encoder_hidden_states", a[2] if len(a) > 2 else None).shape[0]), with_kwargs=True)
    try:
        with attach_tokens(pipe, tokens) as attached:
            on = run()
            with attached.switch(False):
                off = run()
    finally:
        handle.remove()
    assert calls and all(b == 2 for b in calls)  # both CFG branches in one call, tokens in both
    assert torch.equal(off, vanilla)
    assert (on - vanilla).abs().max() > 1e-4


def test_null_prompt_init_sd15(pipes):
    pipe = pipes["sd15"]
    tokens = new_tokens(pipe, "sd15")
    init_from_null_prompt(pipe, tokens)
    embeds = pipe.encode_prompt("", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    for k in range(tokens.config.num_tokens):
        torch.testing.assert_close(tokens(0, torch.tensor([10.0]))[0, k], embeds[0, 0])


# ----------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path, pipes):
    model = pipes["sd3"].transformer
    tokens = random_tokens(model, "sd3", num_layers=2)
    path = save_tokens(tokens, tmp_path / "t.safetensors", base_model="tiny-sd3")
    loaded = load_tokens(path, model=pipes["sd3"])
    assert loaded.config == dataclasses.replace(tokens.config, base_model="tiny-sd3")
    assert torch.equal(loaded.static, tokens.static) and torch.equal(loaded.time.weight, tokens.time.weight)
    assert loaded.static.dtype == torch.float32
    assert not list(tmp_path.glob(TEMP_GLOB))


def test_mismatched_models_give_clear_errors(tmp_path, pipes):
    tokens = random_tokens(pipes["sd3"].transformer, "sd3", num_layers=2)
    path = save_tokens(tokens, tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match=r"width 32.*48 wide"):
        load_tokens(path, model=tiny_sd3_transformer(caption_projection_dim=48))
    with pytest.raises(ValueError, match=r"2 layers.*only 1 blocks"):
        load_tokens(path, model=tiny_sd3_transformer(num_layers=1))
    with pytest.raises(ValueError, match=r"kind 'sd3'.*UNet2DConditionModel"):
        load_tokens(path, model=pipes["sd15"].unet)
    unet_tokens = random_tokens(pipes["sd15"].unet, "sd15")
    with pytest.raises(ValueError, match=r"width 32.*64 wide"):
        check_compatible(dataclasses.replace(unet_tokens.config, kind="sdxl"), pipes["sdxl"].unet)


def test_corrupt_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_tokens(garbage)
    tokens = SoftTokens(SoftTokensConfig(kind="sd3", num_tokens=2, num_layers=2, width=8))
    good = save_tokens(tokens, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_tokens(truncated)
    from safetensors.torch import save_file
    save_file({"static": torch.zeros(2, 2, 8)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a softrepa token file"):
        load_tokens(tmp_path / "plain.safetensors")
    (tmp_path / "x.pth").write_bytes(b"legacy pickle")
    with pytest.raises(ValueError, match="convert it first"):
        load_tokens(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError):
        load_tokens(tmp_path / "missing.safetensors")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_convert_author_files(tmp_path, capsys):
    static = torch.randn(5, 4, 16)  # dc_tokens.pth: a tensor (L, m, d)
    embedding = torch.nn.Embedding(100, 5 * 16)  # dc_t_tokens.pth: a whole pickled nn.Embedding
    torch.save(static, tmp_path / "dc_tokens.pth")
    torch.save(embedding, tmp_path / "dc_t_tokens.pth")
    out = tmp_path / "converted.safetensors"
    assert tokens_main(["convert", "--static", str(tmp_path / "dc_tokens.pth"), "--time",
                        str(tmp_path / "dc_t_tokens.pth"), "--kind", "sd3", "--out", str(out)]) == 0
    tokens = load_tokens(out)
    assert torch.equal(tokens.static, static) and torch.equal(tokens.time.weight, embedding.weight.detach())
    assert (tokens.config.num_layers, tokens.config.num_tokens, tokens.config.width) == (5, 4, 16)
    # a malicious pickle is refused by the weights-only loader, with a clear message
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump(Exploit(), f)
    assert tokens_main(["convert", "--static", str(tmp_path / "evil.pth"), "--kind", "sd3", "--out",
                        str(tmp_path / "evil.safetensors")]) == 2
    assert "weights-only" in capsys.readouterr().err
    assert not (tmp_path / "evil.safetensors").exists()
    assert tokens_main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "num_layers: 5" in printed and f"parameters: {5 * 4 * 16 + 100 * 80:,}" in printed


def test_sd3_medium_token_count_under_one_million():
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):  # the real SD3-medium shape, no memory allocated
        medium = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                       attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                       caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                       pos_embed_max_size=192)
    config = tokens_config_for(medium, "sd3")
    assert (config.num_tokens, config.num_layers, config.width) == (4, 5, 1536)
    count = count_parameters(config)
    assert count == 5 * 4 * 1536 + 100 * 5 * 1536
    assert count < 1_000_000


# ----------------------------------------------------------------------------- token files as untrusted input

GOOD_CONFIG = {"kind": "sd3", "num_tokens": 2, "num_layers": 2, "width": 4, "block_groups": [], "time_bins": 3,
               "use_time": True, "init": "normal", "init_std": 0.02, "base_model": ""}


def write_token_file(path, metadata: dict, tensors: dict | None = None):
    from safetensors.torch import save_file

    tensors = {"static": torch.zeros(2, 2, 4), "time": torch.zeros(3, 8)} if tensors is None else tensors
    save_file(tensors, str(path), metadata=metadata)
    return path


def config_metadata(**changes) -> dict[str, str]:
    return {"softrepa_tokens": json.dumps({**GOOD_CONFIG, **changes}), "format_version": "1"}


@pytest.mark.parametrize("metadata, tensors, says", [
    ({"softrepa_tokens": "{not json", "format_version": "1"}, None, "metadata 'softrepa_tokens': is not JSON"),
    ({"softrepa_tokens": "[1, 2]"}, None, "metadata 'softrepa_tokens': must be a JSON object"),
    (config_metadata(num_layers=-1), None, "field 'num_layers': num_layers must be a whole number >= 1, got -1"),
    (config_metadata(num_tokens=True), None, "field 'num_tokens': num_tokens must be a whole number >= 1, got True"),
    (config_metadata(width="4"), None, "field 'width': width must be a whole number >= 1, got '4'"),
    (config_metadata(kind="sd9"), None, "field 'kind': kind 'sd9' is not a model kind (sd3, "),
    (config_metadata(kind=None), None, "field 'kind': kind must be a model kind's name, got None"),
    (config_metadata(block_groups="down"), None, "field 'block_groups': block_groups must be a list of"),
    (config_metadata(use_time="yes"), None, "field 'use_time': use_time must be true or false"),
    (config_metadata(init_std=float("nan")), None, "field 'init_std': init_std must be a finite number >= 0"),
    (config_metadata(init="pickle"), None, "field 'init': init must be one of ('normal', 'zeros')"),
    (config_metadata(extra=1), None, "field 'extra': unknown fields ['extra']"),
    ({"softrepa_tokens": json.dumps({k: v for k, v in GOOD_CONFIG.items() if k != "kind"})}, None,
     "field 'kind': kind is missing"),
    ({**config_metadata(), "format_version": "2"}, None, "metadata 'format_version' is '2', this version reads 1"),
    (config_metadata(width=8), None, "tensor 'static' has shape (2, 2, 4); the config (metadata 'softrepa_tokens') "
                                     "asks for (num_layers, num_tokens, width) = (2, 2, 8)"),
    (config_metadata(), {"static": torch.zeros(2, 2, 4)}, "tensor 'time' is missing"),
    (config_metadata(), {"static": torch.zeros(2, 2, 4, dtype=torch.int32), "time": torch.zeros(3, 8)},
     "tensor 'static' holds int32, not floating-point numbers"),
    (config_metadata(), {"static": torch.full((2, 2, 4), float("nan")), "time": torch.zeros(3, 8)},
     "tensor 'static' holds NaN or infinite numbers"),
    (config_metadata(use_time=False), None, "unexpected tensors ['time']"),
])
def test_token_metadata_is_checked_field_by_field(tmp_path, metadata, tensors, says):
    """Every problem of a file's metadata or tensors is a ValueError naming the file and the field
    (or tensor) and saying what to do; never a KeyError, TypeError or json error."""
    from editing.token_file import TokenFile

    path = write_token_file(tmp_path / "t.safetensors", metadata, tensors)
    for load in (load_tokens, TokenFile.load):
        with pytest.raises(ValueError) as error:
            load(path)
        assert type(error.value) is ValueError and str(error.value).startswith(str(path)), str(error.value)
        assert says in str(error.value)
    if "tensor" not in says and "format_version" not in says:
        assert "save the tokens again" in str(error.value)  # what to do
    assert load_tokens(write_token_file(tmp_path / "good.safetensors", config_metadata())).config.width == 4


config_values = {"kind": st.sampled_from(["sd3", "sd15", "nope", ""]) | st.none() | st.integers(),
                 "num_tokens": st.integers(-1, 3), "num_layers": st.integers(-1, 3) | st.just(10**12),
                 "width": st.integers(-1, 4) | st.floats() | st.text(max_size=3),
                 "block_groups": st.lists(st.sampled_from(["down", "mid", "up", "side"]), max_size=2)
                 | st.text(max_size=4),
                 "time_bins": st.integers(0, 3) | st.booleans(), "use_time": st.booleans() | st.integers(0, 1),
                 "init": st.sampled_from(["normal", "zeros", "xavier"]), "init_std": st.floats() | st.integers(-1, 1),
                 "base_model": st.text(max_size=5) | st.none(), "extra": st.integers()}
# a valid config (often: a valid load is a case too), or with fields replaced by generated values and dropped
configs = st.builds(lambda changes, dropped: {k: v for k, v in {**GOOD_CONFIG, **changes}.items() if k not in dropped},
                    st.just({}) | st.fixed_dictionaries({}, optional=config_values),
                    st.just(set()) | st.sets(st.sampled_from(sorted(GOOD_CONFIG))))
token_metadata = st.one_of(
    st.fixed_dictionaries({"softrepa_tokens": configs.map(json.dumps), "format_version": st.just("1")}),
    st.fixed_dictionaries({"softrepa_tokens": configs.map(json.dumps)},
                          optional={"format_version": st.sampled_from(["1", "2", ""])}),
    st.dictionaries(st.sampled_from(["softrepa_tokens", "format_version", "other"]), st.text(max_size=20)))
tensor_shapes = st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)


@given(token_metadata, st.dictionaries(st.sampled_from(["static", "time", "junk"]), tensor_shapes, max_size=3),
       st.sampled_from([torch.float32, torch.float16, torch.int64]), st.booleans())
def test_fuzzed_token_metadata_loads_or_names_the_file_and_field(metadata, shapes, dtype, match_config):
    """Generated metadata (wrong types, out of range, missing and extra keys, junk text) and tensors,
    written with safetensors: a valid load, or a ValueError naming the file; nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.safetensors"
        config = _json_or_none(metadata.get("softrepa_tokens", ""))
        if match_config and isinstance(config, dict):  # the tensors the config asks for, when they are small
            shapes = _config_shapes(config) or shapes
        write_token_file(path, metadata, {name: torch.ones(shape, dtype=dtype) for name, shape in shapes.items()})
        try:
            tokens = load_tokens(path)
        except ValueError as error:
            assert str(error).startswith(str(path)) and type(error) is ValueError, str(error)
            return
        loaded = tokens.config
        assert loaded.kind in KINDS and min(loaded.num_tokens, loaded.num_layers, loaded.width) >= 1
        assert tokens.static.shape == (loaded.num_layers, loaded.num_tokens, loaded.width)


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _config_shapes(config: dict) -> dict | None:
    dims = [config.get(name, default) for name, default in (("num_layers", 5), ("num_tokens", 4), ("width", 1536),
                                                      ("time_bins", 100))]
    if not all(type(d) is int and 1 <= d <= 4 for d in dims):
        return None
    layers, tokens, width, bins = dims
    shapes = {"static": (layers, tokens, width)}
    if config.get("use_time", True) is True:
        shapes["time"] = (bins, layers * width)
    return shapes
