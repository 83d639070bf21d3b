"""Token files on the Hub: references resolved by huggingface_hub from a cache laid out as it lays
one out (offline, no network), the model card, and the upload calls (a recording HfApi)."""

from __future__ import annotations

import hashlib
import json

import huggingface_hub.constants
import pytest
import torch

from editing.token_file import TokenFile
from softrepa.tokens import (SoftTokens, SoftTokensConfig, load_tokens, main as tokens_main, model_card,
                             parse_hub_reference, push_tokens, read_token_file, resolve_tokens_path, save_tokens)

COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40


def _tokens(seed: int, width: int = 8) -> SoftTokens:
    torch.manual_seed(seed)
    return SoftTokens(SoftTokensConfig(kind="sd3.5-large", num_tokens=2, num_layers=2, width=width,
                                       base_model="stabilityai/stable-diffusion-3.5-large"))


def _cache_file(cache, repo_id, commit, name, data: bytes):
    """One file in a huggingface_hub cache: blobs/<sha256>, snapshots/<commit>/<name> linking to it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../../blobs/{blob.name}")


def _ref(cache, repo_id, ref, commit):
    refs = cache / f"models--{repo_id.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE at a cache holding user/tokens (main: one file; v1: another)
    and user/two (two token files)."""
    cache = tmp_path / "hub"
    files = {}
    for name, repo_id, commit, seed in (("tokens.safetensors", "user/tokens", COMMIT_MAIN, 1),
                                        ("tokens.safetensors", "user/tokens", COMMIT_V1, 2),
                                        ("a.safetensors", "user/two", COMMIT_MAIN, 3),
                                        ("b.safetensors", "user/two", COMMIT_MAIN, 4)):
        local = save_tokens(_tokens(seed), tmp_path / f"src-{seed}.safetensors")
        files[seed] = local
        _cache_file(cache, repo_id, commit, name, local.read_bytes())
    _cache_file(cache, "user/tokens", COMMIT_MAIN, "README.md", b"# card")
    _ref(cache, "user/tokens", "main", COMMIT_MAIN)
    _ref(cache, "user/tokens", "v1", COMMIT_V1)
    _ref(cache, "user/two", "main", COMMIT_MAIN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads both variables once, at import: set its constants as the variables say
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return {"cache": cache, "files": files}


def test_parse_hub_reference():
    assert parse_hub_reference("user/repo") == ("user/repo", None, None)
    assert parse_hub_reference("user/repo@v1") == ("user/repo", None, "v1")
    assert parse_hub_reference("user/repo/sub/t.safetensors@v1") == ("user/repo", "sub/t.safetensors", "v1")
    assert parse_hub_reference("user/repo/t.safetensors", revision="dev") == ("user/repo", "t.safetensors", "dev")
    for local in ("./runs/t.safetensors", "/abs/t.safetensors", "t.safetensors", "runs/x/notes.txt"):
        assert parse_hub_reference(local) is None
    with pytest.raises(ValueError, match="revision"):
        parse_hub_reference("user/repo@v1", revision="v2")


def test_hub_references_resolve_from_the_offline_cache(hub_cache):
    cache, files = hub_cache["cache"], hub_cache["files"]
    main = resolve_tokens_path("user/tokens")  # the repo's single .safetensors (README.md is not one)
    assert main == cache / "models--user--tokens" / "snapshots" / COMMIT_MAIN / "tokens.safetensors"
    assert main.read_bytes() == files[1].read_bytes()
    assert resolve_tokens_path("user/tokens/tokens.safetensors") == main
    v1 = resolve_tokens_path("user/tokens@v1")
    assert v1.read_bytes() == files[2].read_bytes()
    assert resolve_tokens_path("user/tokens/tokens.safetensors", revision="v1") == v1
    assert resolve_tokens_path("user/two/b.safetensors").read_bytes() == files[4].read_bytes()
    loaded = load_tokens("user/tokens", revision="v1")
    assert torch.equal(loaded.static, _tokens(2).static) and loaded.config.kind == "sd3.5-large"
    token_file = TokenFile.load("user/tokens")  # what the app and python -m editing read
    assert token_file.path == main and torch.equal(token_file.tokens.static, _tokens(1).static)
    assert token_file.sha256 == hashlib.sha256(files[1].read_bytes()).hexdigest()


def test_hub_reference_errors_name_the_reference_and_the_fix(hub_cache):
    with pytest.raises(ValueError, match=r"holds 2 \.safetensors files \(a\.safetensors, b\.safetensors\).*user/two/"):
        resolve_tokens_path("user/two")
    with pytest.raises(FileNotFoundError, match=r"'user/tokens/missing.safetensors'.*HF_HUB_OFFLINE"):
        resolve_tokens_path("user/tokens/missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"user/nothing"):
        load_tokens("user/nothing")


def test_an_existing_local_path_wins(tmp_path, hub_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "tokens").mkdir(parents=True)
    local = save_tokens(_tokens(9), tmp_path / "user" / "tokens" / "tokens.safetensors")
    assert resolve_tokens_path("user/tokens/tokens.safetensors") == local.relative_to(tmp_path)
    assert torch.equal(load_tokens("user/tokens/tokens.safetensors").static, _tokens(9).static)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokens(tmp_path / "missing.safetensors")


def test_model_card_is_written_from_the_metadata(tmp_path):
    path = save_tokens(_tokens(1, width=2432), tmp_path / "t.safetensors", extra_metadata={"step": "4000"})
    config, _, metadata = read_token_file(path)
    card = model_card(config, metadata, "user/repo", "t.safetensors", figures={"CLIPScore": 0.331})
    assert card.startswith("---\n") and "base_model: stabilityai/stable-diffusion-3.5-large" in card
    assert f"{2 * 2 * 2432 + 100 * 2 * 2432:,} trainable parameters: m = 2 tokens on L = 2 layers" in card
    assert "model kind `sd3.5-large`" in card and "--tokens user/repo/t.safetensors" in card
    assert "| step | 4000 |" in card and "| CLIPScore | 0.331 |" in card
    bare = model_card(config, {k: v for k, v in metadata.items() if k != "step"}, "user/repo", "t.safetensors")
    assert "## Training" not in bare and "Nothing measured was given" in bare


class RecordingApi:
    """Stands in for ``HfApi``: records each call; uploads keep the bytes sent."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            data = kwargs.get("path_or_fileobj")
            if isinstance(data, str):
                kwargs = {**kwargs, "bytes": open(data, "rb").read()}
            self.calls.append((name, args, kwargs))
        return record


def test_push_creates_the_repo_and_uploads_file_and_card(tmp_path):
    path = save_tokens(_tokens(1), tmp_path / "t.safetensors")
    api = RecordingApi()
    reference = push_tokens(path, "user/repo", revision="v1", private=True, figures={"acc": 0.9}, api=api)
    assert reference == "user/repo/t.safetensors@v1"
    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_file", "upload_file"]
    assert api.calls[0][1] == ("user/repo",) and api.calls[0][2] == {"private": True, "exist_ok": True}
    upload, card = api.calls[2][2], api.calls[3][2]
    assert upload["path_in_repo"] == "t.safetensors" and upload["bytes"] == path.read_bytes()
    assert upload["repo_id"] == "user/repo" and upload["revision"] == "v1"
    assert card["path_in_repo"] == "README.md" and b"| acc | 0.9 |" in card["path_or_fileobj"]


def test_push_cli_reads_figures_and_refuses_bad_json(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    path = save_tokens(_tokens(1), tmp_path / "t.safetensors")
    api = RecordingApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)  # the CLI's own HfApi(), recording
    (tmp_path / "f.json").write_text(json.dumps({"fid": 21.5}))
    assert tokens_main(["push", str(path), "user/r", "--figures", str(tmp_path / "f.json"), "--private"]) == 0
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_file", "upload_file"]  # no branch
    assert api.calls[0][2]["private"] and api.calls[1][2]["revision"] is None
    assert b"| fid | 21.5 |" in api.calls[2][2]["path_or_fileobj"]
    assert "--tokens user/r/t.safetensors" in capsys.readouterr().out
    assert tokens_main(["push", str(path), "user/r", "--figures", "[1, 2]"]) == 2
    assert "JSON object" in capsys.readouterr().err and len(api.calls) == 3  # refused before any call
