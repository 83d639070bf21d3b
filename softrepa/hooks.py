"""Attach soft tokens to unmodified diffusers denoisers (paper Algorithm 1).

Nothing here copies a diffusers forward. Tokens enter through PyTorch module hooks:

* the denoiser's forward pre-hook captures the timestep of the call (0..1000 scale);
* MM-DiT (``SD3Transformer2DModel``): on each of the first L ``transformer_blocks`` a pre-hook
  prepends the m tokens to ``encoder_hidden_states`` (the text stream after ``context_embedder``,
  width ``caption_projection_dim``) and a forward hook drops the m token outputs, so each layer
  gets fresh tokens (Algorithm 1, lines 11-18);
* FLUX (``FluxTransformer2DModel``): as MM-DiT on the first L of the double-stream
  ``transformer_blocks``, and the block's ``image_rotary_emb`` gets m identity rows in front
  (the tokens' position ids are 0, as FLUX's text ids); the captured timestep is sigma (0..1)
  and is scaled by 1000 (float64, rounded to 1e-3) for the bins (``Architecture.timestep_scale``).
  Design: ``softrepa.flux``;
* UNet (``UNet2DConditionModel``): a pre-hook on each cross-attention ``Transformer2DModel`` of
  the chosen block groups inserts the tokens after the BOS position of ``encoder_hidden_states``
  (77 -> 77 + m); its output is the image stream, so nothing needs dropping.

Hooks read one flag, so tokens switch on and off per call, and ``detach`` removes every hook
(the model is then exactly as before). Tokens reach both CFG branches because the pipelines run
both through the same denoiser call. Where each family takes the tokens is ``softrepa.models``'
``Architecture``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from softrepa.models import ARCHITECTURES, check_compatible, denoiser_of, get_kind
from softrepa.tokens import SoftTokens


def _argument(args: tuple, kwargs: dict, signature: inspect.Signature, name: str):
    """Read argument ``name`` of a call whether it was passed by position or keyword."""
    if name in kwargs:
        return kwargs[name]
    position = list(signature.parameters).index(name)
    return args[position] if position < len(args) else None


def _replace_argument(args: tuple, kwargs: dict, signature: inspect.Signature, name: str, value):
    if name in kwargs or list(signature.parameters).index(name) >= len(args):
        kwargs = {**kwargs, name: value}
    else:
        args = list(args)
        args[list(signature.parameters).index(name)] = value
        args = tuple(args)
    return args, kwargs


class AttachedTokens:
    """Soft tokens hooked into a denoiser. Switch with ``enabled`` / ``switch(on)``; ``detach()``.

    Also a context manager that detaches on exit::

        with attach_tokens(pipe, tokens):
            image = pipe(prompt).images[0]
    """

    def __init__(self, model: nn.Module | Any, tokens: SoftTokens, enabled: bool = True):
        config = tokens.config
        self.denoiser = denoiser_of(model, config.kind)
        check_compatible(config, self.denoiser)
        self.arch = ARCHITECTURES[get_kind(config.kind).arch]
        self.tokens = tokens
        self.enabled = enabled
        self._timestep: torch.Tensor | None = None
        # tokens live where the model lives (the CPU when an offloaded model's weights are not
        # materialized there); they stay float32 and are cast per call to the stream's device and dtype
        device = next(self.denoiser.parameters()).device
        tokens.to(device=device if device.type != "meta" else torch.device("cpu"))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        model_signature = inspect.signature(self.denoiser.forward)
        self._handles.append(self.denoiser.register_forward_pre_hook(
            self._capture_timestep(model_signature), with_kwargs=True))
        for module, layer in self.arch.hook_points(self.denoiser, config):
            signature = inspect.signature(module.forward)
            self._handles.append(module.register_forward_pre_hook(
                self._insert_tokens(layer, signature), with_kwargs=True))
            if self.arch.drops_outputs:
                self._handles.append(module.register_forward_hook(self._drop_tokens()))

    # the hooks ---------------------------------------------------------------

    def _capture_timestep(self, signature: inspect.Signature) -> Callable:
        def hook(module, args, kwargs):
            # Kept after the call returns: gradient checkpointing re-runs blocks during backward.
            self._timestep = _argument(args, kwargs, signature, "timestep")
            return None

        return hook

    def _insert_tokens(self, layer: int, signature: inspect.Signature) -> Callable:
        def hook(module, args, kwargs):
            if not self.enabled:
                return None
            text = _argument(args, kwargs, signature, "encoder_hidden_states")  # (B, n, d)
            if text is None:
                raise RuntimeError("soft tokens: the hooked block got no encoder_hidden_states")
            if self._timestep is None:
                raise RuntimeError("soft tokens: no timestep captured; call the denoiser itself, not its blocks")
            home = self.tokens.static.device  # an offloaded model runs elsewhere than its tokens rest
            timestep = self._timestep.to(home) if isinstance(self._timestep, torch.Tensor) else self._timestep
            if self.arch.timestep_scale != 1.0:  # FLUX: sigma 0..1 -> the tokens' 0..1000 (t / 1000 * 1000 = t)
                timestep = torch.round(torch.as_tensor(timestep).double() * self.arch.timestep_scale, decimals=3)
            tokens = self.tokens(layer, timestep, batch_size=text.shape[0])
            tokens = tokens.to(device=text.device, dtype=text.dtype)  # (B, m, d); no copy when already there
            if kwargs.get("encoder_attention_mask") is not None:
                # the UNet hands blocks a precomputed bias; widening it is not supported (pipelines pass None)
                raise NotImplementedError("soft tokens with an encoder_attention_mask are not supported")
            widened = self.arch.insert(text, tokens)
            args, kwargs = _replace_argument(args, kwargs, signature, "encoder_hidden_states", widened)
            if self.arch.block_inputs:  # FLUX: the rotary table grows by m rows too
                inputs = {name: _argument(args, kwargs, signature, name) for name in self.arch.block_inputs}
                for name, value in self.arch.widen(self.denoiser, inputs, self.tokens.config.num_tokens).items():
                    args, kwargs = _replace_argument(args, kwargs, signature, name, value)
            return args, kwargs

        return hook

    def _drop_tokens(self) -> Callable:
        def hook(module, args, output):
            if not self.enabled:
                return None
            return self.arch.drop(output, self.tokens.config.num_tokens)

        return hook

    # switching ---------------------------------------------------------------

    @contextlib.contextmanager
    def switch(self, on: bool):
        """Temporarily set tokens on or off: ``with attached.switch(False): ...``."""
        previous, self.enabled = self.enabled, bool(on)
        try:
            yield self
        finally:
            self.enabled = previous

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._timestep = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "AttachedTokens":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_tokens(model: nn.Module | Any, tokens: SoftTokens, enabled: bool = True) -> AttachedTokens:
    """Hook ``tokens`` into ``model`` (a denoiser or a diffusers pipeline of the tokens' kind)."""
    return AttachedTokens(model, tokens, enabled=enabled)
