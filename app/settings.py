"""Settings of the web app: command-line flags, then ``SOFTREPA_*`` environment variables, then defaults.

A Hugging Face Space has no command line, so every flag has an environment variable (set them as
Space variables). Defaults: the bundled shapes model (``assets/shapes-sd3``) with its soft tokens,
which runs on any CPU with nothing to download.

This module does not import gradio: ``app.py`` reads the settings and points ``GRADIO_TEMP_DIR``
into the app's folder before Gradio is imported (Gradio reads some paths at import time).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from softrepa.atomic import file_sha256
from softrepa.compile import COMPILE_MODES
from softrepa.kinds import SHAPES_MODEL_DIR, kind_of_hub_id

if TYPE_CHECKING:
    from editing.token_file import TokenFile

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL_DIR = SHAPES_MODEL_DIR
BUNDLED_KIND = "shapes-sd3"
BUNDLED_TOKENS = REPO_ROOT / "assets" / "shapes-sd3-softrepa.safetensors"
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
NO_TOKENS_WORDS = ("", "none", "off", "no")  # SOFTREPA_TOKENS (and _CAPTIONER, _REWRITER) values that mean "none"
# FlowEdit runs on MM-DiT (SD3, SD3.5) and FLUX.1 pipelines (editing.family)
DEVICE_KINDS = ("sd3", "sd3.5-medium", "sd3.5-large", "flux-dev", "flux-schnell", "shapes-sd3")
OFFLOAD_CHOICES = ("none", "model", "sequential")  # == softrepa.models.OFFLOAD_MODES (no torch import here)
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")

# flag (argparse dest) -> environment variable; docs/app.md lists the same table
ENV_VARS: dict[str, str] = {
    "model": "SOFTREPA_MODEL",
    "kind": "SOFTREPA_KIND",
    "tokens": "SOFTREPA_TOKENS",
    "device": "SOFTREPA_DEVICE",
    "dtype": "SOFTREPA_DTYPE",
    "no_t5": "SOFTREPA_NO_T5",
    "offload": "SOFTREPA_OFFLOAD",
    "vae_tiling": "SOFTREPA_VAE_TILING",
    "max_sequence_length": "SOFTREPA_MAX_SEQUENCE_LENGTH",
    "threads": "SOFTREPA_THREADS",
    "compile": "SOFTREPA_COMPILE",
    "host": "SOFTREPA_HOST",
    "port": "SOFTREPA_PORT",
    "temp_dir": "SOFTREPA_TEMP_DIR",
    "examples_dir": "SOFTREPA_EXAMPLES_DIR",
    "queue_size": "SOFTREPA_QUEUE_SIZE",
    "max_file_size": "SOFTREPA_MAX_FILE_SIZE",
    "eager_load": "SOFTREPA_EAGER_LOAD",
    "captioner": "SOFTREPA_CAPTIONER",
    "rewriter": "SOFTREPA_REWRITER",
    "scorer": "SOFTREPA_SCORER",
    "mcp": "SOFTREPA_MCP",
}
# what Gradio and Hugging Face Spaces themselves set for the server address (used when ours are unset)
GRADIO_ENV_VARS: dict[str, str] = {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT"}
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_TOKEN_READ_LOCK = threading.Lock()  # the background model loader and the page may ask for the tokens at once


class SettingsError(ValueError):
    """A setting that cannot work, with a message for the person starting the app."""


@dataclass
class AppSettings:
    """Everything the app needs to start; build with ``resolve_settings`` / ``parse_settings``.

    model: Hub id or local diffusers folder of an SD3-architecture pipeline.
    kind: model kind (``softrepa.models.KINDS``): picks the default preset, resolution and
        prompt length.
    tokens: soft-token file (.safetensors), or None to edit without tokens; ``token_file()`` reads it
        (once).
    device, dtype: "auto" = CUDA, then MPS, then CPU; on GPUs the kind's dtype
        (``softrepa.runtime.model_dtype``), float32 on CPU.
    no_t5: skip the T5 text encoder (SD3 medium: saves about 9 GB).
    offload: "model" / "sequential" keep the weights on the CPU and move them to the GPU while they
        run (``softrepa.models.MemoryOptions``); vae_tiling: encode / decode large images in tiles.
    max_sequence_length: T5 tokens per prompt (None: the kind's; the shapes model uses 8).
    threads: CPU threads for torch: "auto" or a count. auto is 1 on machines with at most 4 cores, where
        torch's one per core spin-waits for cores other work holds (an edit many times slower), else
        torch's default; an OMP_NUM_THREADS already set is kept. The command lines' rule, applied when
        the model loads: ``softrepa.runtime.threads_for``.
    temp_dir: the only folder the app writes to: uploads (Gradio's cache), results, examples.
    examples_dir: precomputed examples (``app/make_examples.py`` writes them).
    queue_size: edits that may wait in the queue; one runs at a time (one device).
    max_file_size: upload limit, Gradio syntax ("20mb").
    eager_load: load the model before serving (ZeroGPU Spaces need this); otherwise the page is
        served at once and the model loads in the background with a visible status.
    captioner: LLaVA checkpoint (Hub id or folder) that writes the source prompt from the image (the
        Describe button, ``app/prompt_help.py``); None: no button, except on the shapes model, whose
        describer needs no model. Loaded on first use, on ``device``.
    rewriter: chat model (Hub id or folder) that turns a one-line instruction into the target prompt;
        None: no instruction box, except on the shapes model. Loaded on first use, on ``device``.
    scorer: the CLIP (Hub id or folder) that scores Auto strength's candidates (``editing.scoring``);
        None: the kind's (``ModelKind.scorer``: openai/clip-vit-large-patch14, the bundled shapes scorer
        for the shapes model). Loaded on the first Auto edit, on ``device``.
    mcp: also serve the API endpoints (/edit, /compare) as MCP tools for agents
        (``launch(mcp_server=True)``: ``/gradio_api/mcp/``); needs the ``mcp`` package (the ``[mcp]`` extra).
    """

    model: str = str(BUNDLED_MODEL_DIR)
    kind: str = BUNDLED_KIND
    tokens: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    no_t5: bool = False
    offload: str = "none"
    vae_tiling: bool = False
    max_sequence_length: int | None = None
    threads: int | str = "auto"
    compile: str = "off"  # softrepa.compile: off or a torch.compile mode; warmed up before the model is ready
    host: str = "127.0.0.1"
    port: int = 7860
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "softrepa-app")
    examples_dir: Path = EXAMPLES_DIR
    queue_size: int = 16
    max_file_size: str = "20mb"
    history_size: int = 24
    outputs_max_age_s: float = 24 * 3600.0  # results older than this are deleted (a day of sessions)
    eager_load: bool = False
    captioner: str | None = None
    rewriter: str | None = None
    scorer: str | None = None
    mcp: bool = False
    # (path, TokenFile / None / the read's error) once ``token_file`` has read ``tokens``
    _token_read: tuple[str | None, Any] | None = field(default=None, init=False, repr=False, compare=False)
    # (path, sha256) once ``token_sha256`` has hashed a local ``tokens`` file that was not read yet
    _token_hash: tuple[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def token_file(self) -> TokenFile | None:
        """The soft-token file ``tokens``, read and hashed on first use and kept.

        The model kind, the example gallery and the editor all take it from here, so the file is
        read and hashed once. None without tokens; an unreadable file raises its ``OSError`` /
        ``ValueError`` on every call without being read again.
        """
        with _TOKEN_READ_LOCK:
            if self._token_read is None or self._token_read[0] != self.tokens:  # first use, or new tokens
                known = self._token_hash[1] if self._token_hash and self._token_hash[0] == self.tokens else None
                self._token_read = (self.tokens, _read_token_file(self.tokens, known))
            result = self._token_read[1]
        if isinstance(result, Exception):
            raise result
        return result

    def token_sha256(self) -> str | None:
        """The sha256 of the token file's bytes; None without tokens or when it cannot be read.

        The example gallery needs only this, on the page served before torch loads: a local file not
        read yet is hashed as bytes (``softrepa.atomic.file_sha256``), not loaded as tokens, and the
        hash is kept for ``token_file``'s read (the file is hashed once); a Hub reference is fetched
        and read (``token_file``). A file that is not a token file matches no gallery result anyway.
        """
        with _TOKEN_READ_LOCK:
            read = self._token_read is not None and self._token_read[0] == self.tokens
            if self.tokens is not None and not read and Path(self.tokens).is_file():
                if self._token_hash is None or self._token_hash[0] != self.tokens:
                    self._token_hash = (self.tokens, file_sha256(self.tokens))
                return self._token_hash[1]
        try:
            token_file = self.token_file()
        except (OSError, ValueError):
            return None
        return token_file.sha256 if token_file is not None else None

    @property
    def is_bundled_model(self) -> bool:
        return Path(self.model).resolve() == BUNDLED_MODEL_DIR.resolve()

    @property
    def model_label(self) -> str:
        """How the model is named in the page and in PNG metadata (repo-relative for local folders in the repo)."""
        path = Path(self.model)
        if path.is_absolute() or path.exists():  # a folder (a Hub id is neither)
            try:
                return str(path.resolve().relative_to(REPO_ROOT))
            except ValueError:
                return str(path)
        return self.model

    @property
    def uploads_dir(self) -> Path:
        return self.temp_dir / "gradio"

    @property
    def outputs_dir(self) -> Path:
        return self.temp_dir / "outputs"

    def describe(self) -> str:
        tokens = Path(self.tokens).name if self.tokens else "none"
        return f"model {self.model_label} (kind {self.kind}), soft tokens {tokens}, device {self.device}/{self.dtype}"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags (shared with ``app/make_examples.py``); every default is None so the
    environment and then the built-in default apply."""
    model = parser.add_argument_group("model")
    bundled = BUNDLED_MODEL_DIR.relative_to(REPO_ROOT)
    model.add_argument("--model", help=f"Hub id or local diffusers folder [{ENV_VARS['model']}] "
                                       f"(default: the bundled shapes model, {bundled})")
    model.add_argument("--kind", help=f"model kind: {', '.join(DEVICE_KINDS)} [{ENV_VARS['kind']}] "
                                      "(default: shapes-sd3 for the bundled model, else the tokens' kind, else sd3)")
    tokens = model.add_mutually_exclusive_group()
    tokens.add_argument("--tokens", help=f"soft-token file .safetensors [{ENV_VARS['tokens']}; 'none' for no tokens] "
                                         "(default: the bundled tokens with the bundled model)")
    tokens.add_argument("--no-tokens", action="store_true", help="start without soft tokens")
    model.add_argument("--device", help=f"auto, cpu, cuda, cuda:1, mps [{ENV_VARS['device']}] (default auto)")
    model.add_argument("--dtype", choices=DTYPE_CHOICES, help=f"[{ENV_VARS['dtype']}] (default auto: the model card's "
                                                              "on GPUs, float16 for SD3, bfloat16 for SD3.5 and FLUX.1; "
                                                              "float32 on CPU)")
    model.add_argument("--no-t5", action="store_const", const=True, default=None,
                       help=f"do not load SD3's T5 text encoder (saves ~9 GB) [{ENV_VARS['no_t5']}=1]")
    model.add_argument("--offload", choices=OFFLOAD_CHOICES,
                       help=f"keep weights on the CPU between uses: model or sequential [{ENV_VARS['offload']}] "
                            "(default none; docs/benchmarks.md#what-gpu-do-i-need)")
    model.add_argument("--vae-tiling", action="store_const", const=True, default=None,
                       help=f"encode/decode large images in tiles [{ENV_VARS['vae_tiling']}=1]")
    model.add_argument("--max-sequence-length", type=int,
                       help=f"T5 tokens per prompt [{ENV_VARS['max_sequence_length']}] (default: the kind's, 256 for "
                            "sd3, 8 for shapes-sd3)")
    model.add_argument("--compile", nargs="?", const="default", choices=("off", *COMPILE_MODES),
                       help=f"torch.compile the transformer's blocks, warmed up before the model is reported ready "
                            f"[{ENV_VARS['compile']}] (default off; --compile alone: default mode)")
    model.add_argument("--threads", help=f"CPU threads for torch: auto or a count [{ENV_VARS['threads']}] (default "
                                         "auto: 1 on machines with at most 4 cores, where more make a busy machine "
                                         "many times slower; else torch's default)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags of ``python app.py`` (None = unset: the environment, then the default, applies)."""
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Web editor: FlowEdit on Stable Diffusion 3 with SoftREPA soft tokens. "
        "Every flag can also be set with the environment variable in brackets.")
    add_model_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", help=f"address to listen on [{ENV_VARS['host']} or GRADIO_SERVER_NAME] "
                                       "(default 127.0.0.1; 0.0.0.0 to serve the network)")
    server.add_argument("--port", type=int, help=f"[{ENV_VARS['port']} or GRADIO_SERVER_PORT] (default 7860)")
    server.add_argument("--temp-dir", help=f"the app's only writable folder [{ENV_VARS['temp_dir']}] "
                                           "(default: <system temp>/softrepa-app)")
    server.add_argument("--examples-dir", help=f"precomputed examples [{ENV_VARS['examples_dir']}] "
                                               "(default assets/examples)")
    server.add_argument("--queue-size", type=int, help=f"edits that may wait [{ENV_VARS['queue_size']}] (default 16)")
    server.add_argument("--max-file-size", help=f"upload limit, e.g. 20mb [{ENV_VARS['max_file_size']}] (default 20mb)")
    server.add_argument("--eager-load", action="store_const", const=True, default=None,
                        help=f"load the model before serving [{ENV_VARS['eager_load']}=1] (default: in the "
                             "background, on ZeroGPU Spaces before serving)")
    server.add_argument("--mcp", action="store_const", const=True, default=None,
                        help=f"also serve the API as MCP tools for agents at /gradio_api/mcp/ [{ENV_VARS['mcp']}=1] "
                             "(needs the mcp package: pip install -e '.[mcp]')")
    helpers = parser.add_argument_group("prompt help (real models; the shapes model needs neither)")
    helpers.add_argument("--captioner", metavar="MODEL",
                         help=f"LLaVA Hub id or folder that writes the source prompt from the image (Describe "
                              f"button; loaded on first use, on --device) [{ENV_VARS['captioner']}] (default: none, "
                              "no button), e.g. llava-hf/llava-1.5-13b-hf")
    helpers.add_argument("--rewriter", metavar="MODEL",
                         help=f"chat model Hub id or folder that turns an instruction into the target prompt "
                              f"(loaded on first use, on --device) [{ENV_VARS['rewriter']}] (default: none, no "
                              "instruction box), e.g. meta-llama/Llama-3.1-8B-Instruct")
    helpers.add_argument("--scorer", metavar="MODEL",
                         help=f"CLIP Hub id or folder that scores Auto strength's candidates (loaded on the first "
                              f"Auto edit, on --device) [{ENV_VARS['scorer']}] (default: the model kind's: "
                              "openai/clip-vit-large-patch14; the bundled shapes scorer for the shapes model)")
    return parser.parse_args(argv)


def _env_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise SettingsError(f"{name}={value!r}: use one of {TRUE_WORDS + FALSE_WORDS[:-1]}")


def _int_setting(name: str, value: str, minimum: int) -> int:
    """A whole-number setting; ``name`` is the flag/variable pair the message names."""
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}: {value!r} is not a whole number") from None
    if number < minimum:
        raise SettingsError(f"{name}: {number} must be at least {minimum}")
    return number


def _read_token_file(path: str | None, sha256: str | None = None) -> TokenFile | Exception | None:
    """``path`` read as a ``TokenFile`` (``sha256``: its hash, when already known), or the error saying
    why it cannot be (None: no tokens)."""
    if path is None:
        return None
    from editing.token_file import TokenFile  # torch: only when there are tokens to read

    try:
        return TokenFile.load(path, sha256)
    except (OSError, ValueError) as exc:
        return exc


def _token_file_kind(settings: AppSettings) -> str | None:
    """The kind written in the settings' token file, or None when it cannot be read (reported when the model loads)."""
    try:
        token_file = settings.token_file()
    except (OSError, ValueError):
        return None
    return token_file.kind if token_file is not None else None


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> AppSettings:
    """Merge flags (``args``, None = unset), environment (``env``) and defaults; ``SettingsError`` if unusable."""

    def pick(name: str) -> str | None:
        flag = getattr(args, name, None)
        if flag is not None:
            return str(flag)
        for variable in (ENV_VARS.get(name), GRADIO_ENV_VARS.get(name)):
            if variable and env.get(variable) not in (None, ""):
                return env[variable]
        return None

    settings = AppSettings()
    model = pick("model")
    if model is not None:
        settings.model = model
    explicit_kind = pick("kind")

    # tokens: --no-tokens / "none" -> no tokens; unset -> the bundled tokens with the bundled model only
    tokens_value = getattr(args, "tokens", None)
    if tokens_value is None and ENV_VARS["tokens"] in env:
        tokens_value = env[ENV_VARS["tokens"]]
    no_tokens_word = tokens_value is not None and tokens_value.strip().lower() in NO_TOKENS_WORDS
    if getattr(args, "no_tokens", False) or no_tokens_word:
        settings.tokens = None
    elif tokens_value is not None:
        settings.tokens = tokens_value
    elif settings.is_bundled_model and BUNDLED_TOKENS.is_file():
        settings.tokens = str(BUNDLED_TOKENS)
    else:
        settings.tokens = None

    if explicit_kind is not None:
        settings.kind = explicit_kind
    elif settings.is_bundled_model:
        settings.kind = BUNDLED_KIND
    elif (hub_kind := kind_of_hub_id(settings.model)) is not None:
        settings.kind = hub_kind
    elif (token_kind := _token_file_kind(settings)) in DEVICE_KINDS:
        settings.kind = token_kind
    else:
        settings.kind = "sd3"
    if settings.kind not in DEVICE_KINDS:
        raise SettingsError(f"kind {settings.kind!r} cannot be edited here: FlowEdit runs on SD3- and FLUX-architecture models "
                            f"({', '.join(DEVICE_KINDS)})")

    for name in ("device", "dtype", "host", "max_file_size", "offload", "compile"):
        value = pick(name)
        if value is not None:
            setattr(settings, name, value)
    if settings.compile not in ("off", *COMPILE_MODES):
        raise SettingsError(f"--compile / {ENV_VARS['compile']} {settings.compile!r}: choose off or one of "
                            f"{', '.join(COMPILE_MODES)}")
    if settings.dtype not in DTYPE_CHOICES:
        raise SettingsError(f"dtype {settings.dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    if settings.offload not in OFFLOAD_CHOICES:
        raise SettingsError(f"--offload / {ENV_VARS['offload']} {settings.offload!r}: choose one of "
                            f"{', '.join(OFFLOAD_CHOICES)}")
    for name, minimum in (("port", 0), ("queue_size", 1), ("max_sequence_length", 1)):
        value = pick(name)
        if value is not None:
            setattr(settings, name, _int_setting(f"--{name.replace('_', '-')} / {ENV_VARS[name]}", value, minimum))
    threads = pick("threads")
    if threads is not None:  # what auto means is decided when the model loads (softrepa.runtime.threads_for)
        auto = threads.strip().lower() == "auto"
        settings.threads = "auto" if auto else _int_setting(f"--threads / {ENV_VARS['threads']}", threads, 1)
    if settings.port > 65535:
        raise SettingsError(f"port {settings.port} is over 65535")
    for name in ("temp_dir", "examples_dir"):
        value = pick(name)
        if value is not None:
            setattr(settings, name, Path(value).expanduser())
    for name in ("captioner", "rewriter", "scorer"):
        value = pick(name)
        if value is not None and value.strip().lower() not in NO_TOKENS_WORDS:
            setattr(settings, name, value.strip())
    for name in ("no_t5", "vae_tiling", "eager_load", "mcp"):
        flag = getattr(args, name, None)
        if flag is not None:
            setattr(settings, name, bool(flag))
        elif env.get(ENV_VARS[name]) is not None:
            setattr(settings, name, _env_bool(ENV_VARS[name], env[ENV_VARS[name]]))
    if settings.mcp and importlib.util.find_spec("mcp") is None:  # Gradio would fail later, inside launch
        raise SettingsError(f"--mcp / {ENV_VARS['mcp']}: the MCP server needs the mcp package; install it with "
                            "pip install -e '.[mcp]' (or pip install 'mcp>=1.21,<2')")
    settings.temp_dir = settings.temp_dir.resolve()
    return settings


def parse_settings(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> AppSettings:
    """Settings from the command line and the environment (``os.environ`` by default)."""
    return resolve_settings(parse_args(argv), os.environ if env is None else env)
