"""DiffusionBERT's denoiser: a Hugging Face ``BertForMaskedLM`` with optional time conditioning.

Absorbing-state ([MASK]) discrete diffusion reuses a (pre-trained) masked LM as the denoiser:
tokens (B, L) and times t (B,) in [0, 1] map to logits (B, L, V). He et al. 2023, DiffusionBERT
§4.3 (time-agnostic decoding) compares three ways of telling BERT the time step:

* ``"none"``: no time input at all (the masked tokens already reveal t; best in the paper);
* ``"token"``: a time token inserted right after [CLS];
* ``"layerwise"``: a per-layer time MLP added to each attention-block output (official
  ``modeling_bert``), implemented here with forward hooks so the stock HF model is unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM

from textdiff.nn.hf import build_hf_model
from textdiff.nn.layers import timestep_embedding

BertSpec = Union[str, "os.PathLike[str]", Mapping, BertConfig, BertForMaskedLM]
TimeMode = Literal["none", "token", "layerwise"]


def build_bert(bert: BertSpec, vocab_size: Optional[int] = None) -> BertForMaskedLM:
    """Build a ``BertForMaskedLM`` (maps input ids (B, L) to logits (B, L, V)) from a hub name or local
    directory, a mapping of ``BertConfig`` fields or a ``BertConfig`` (random init), or a model;
    ``vocab_size`` is set on configs and checked against models (see ``build_hf_model``)."""
    return build_hf_model(bert, BertForMaskedLM, BertConfig, vocab_size, what="BERT")


class TimeConditionedBert(nn.Module):
    """``BertForMaskedLM`` denoiser with time conditioning (He et al. 2023, DiffusionBERT §4.3).

    Args:
        bert: anything ``build_bert`` accepts.
        time_mode: "none" (time-agnostic decoding: t ignored), "token" (a time vector
            ``Linear(H, H)(sinusoid(t T))`` inserted at position 1, after [CLS]; the official code
            instead reuses vocabulary id ``t + 110``, which breaks for vocabularies smaller than
            T + 110), or "layerwise" (per layer ``Linear(H, 2H)-ReLU-Linear(2H, H)`` of
            ``sinusoid(t T)`` added to the attention-block output; last Linear zero-initialised so
            a pre-trained BERT starts unchanged).
        num_steps: T; the sinusoid is taken of ``t * T`` with ``max_period = T``.
        vocab_size: the tokenizer's V, checked against / set on the model (see ``build_bert``).

    Note: "layerwise" stores the time embedding only for the duration of ``forward``, so it does
    not support HF gradient checkpointing (recomputation in backward would miss the time).
    """

    def __init__(self, bert: BertSpec, time_mode: TimeMode = "none", num_steps: int = 2048,
                 vocab_size: Optional[int] = None) -> None:
        super().__init__()
        if time_mode not in ("none", "token", "layerwise"):
            raise ValueError(f"time_mode must be 'none', 'token' or 'layerwise', got {time_mode!r}")
        self.bert = build_bert(bert, vocab_size)
        self.time_mode, self.num_steps = time_mode, int(num_steps)
        h = self.hidden_size
        self._time_emb: Optional[Tensor] = None  # (B, H) sinusoid, set only inside forward
        if time_mode == "token":
            self.time_proj = nn.Linear(h, h)
        elif time_mode == "layerwise":
            self.time_mlps = nn.ModuleList(
                nn.Sequential(nn.Linear(h, 2 * h), nn.ReLU(), nn.Linear(2 * h, h))
                for _ in self.bert.bert.encoder.layer)
            for i, (mlp, layer) in enumerate(zip(self.time_mlps, self.bert.bert.encoder.layer)):
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)
                layer.attention.register_forward_hook(partial(self._add_time, i))

    @property
    def config(self) -> BertConfig:
        """The backbone's ``BertConfig``."""
        return self.bert.config

    @property
    def vocab_size(self) -> int:
        """V, the logits' last dimension."""
        return self.config.vocab_size

    @property
    def hidden_size(self) -> int:
        """H, the BERT width."""
        return self.config.hidden_size

    @property
    def max_len(self) -> int:
        """Longest input L: max_position_embeddings, minus 1 in "token" mode."""
        return self.config.max_position_embeddings - (self.time_mode == "token")

    def _add_time(self, i: int, module: nn.Module, args, output):
        """Forward hook on layer i's ``BertAttention``: adds ``time_mlps[i](emb)`` (B, 1, H) to
        its output (B, L, H), a tensor or the first item of a tuple (transformers 5.x)."""
        if self._time_emb is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + self.time_mlps[i](self._time_emb).to(hidden.dtype).unsqueeze(1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _sinusoid(self, t: Tensor) -> Tensor:
        """(B,) times in [0, 1] -> (B, H) ``timestep_embedding(t T, H, max_period=T)``."""
        return timestep_embedding(t * self.num_steps, self.hidden_size, max_period=self.num_steps)

    def forward(self, input_ids: Tensor, t: Tensor,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """Denoise.

        Args:
            input_ids: (B, L) long, noisy tokens ([MASK] = absorbed).
            t: (B,) float in [0, 1] (1 = all noise); ignored when ``time_mode="none"``.
            attention_mask: (B, L) bool/int, 1 = attend (0 = padding).

        Returns:
            (B, L, V) float logits.
        """
        if attention_mask is not None:
            attention_mask = attention_mask.long()  # HF 5.x casts a 2D mask to bool itself
        if self.time_mode == "none":
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits
        b, length = input_ids.shape
        t = t.to(input_ids.device).expand(b)
        if self.time_mode == "layerwise":
            if self.training and any(getattr(m, "gradient_checkpointing", False)
                                     for m in self.bert.modules()):
                raise NotImplementedError("layerwise time mode: no gradient checkpointing")
            self._time_emb = self._sinusoid(t)
            try:
                return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits
            finally:
                self._time_emb = None
        max_pos = self.config.max_position_embeddings  # "token" mode from here on
        if length + 1 > max_pos:
            raise ValueError(f"token time mode needs L + 1 <= max_position_embeddings, got "
                             f"L={length} and max_position_embeddings={max_pos}")
        embeds = self.bert.bert.embeddings.word_embeddings(input_ids)
        time_vec = self.time_proj(self._sinusoid(t)).to(embeds.dtype)
        embeds = torch.cat([embeds[:, :1], time_vec.unsqueeze(1), embeds[:, 1:]], dim=1)
        if attention_mask is not None:
            cls, rest = attention_mask[:, :1], attention_mask[:, 1:]
            attention_mask = torch.cat([cls, torch.ones_like(cls), rest], dim=1)
        logits = self.bert(inputs_embeds=embeds, attention_mask=attention_mask).logits
        return torch.cat([logits[:, :1], logits[:, 2:]], dim=1)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> None:
        """Save the underlying ``BertForMaskedLM`` (reload with ``build_bert(directory)``); the time
        layers are not included (they live in this module's ``state_dict``)."""
        self.bert.save_pretrained(os.fspath(directory))
