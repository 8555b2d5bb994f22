"""Attribute classifiers on noisy latents, for Diffusion-LM's plug-and-play control (Li et al. 2022 §5.2).

A ``NoisyClassifier`` learns p(c | x_t, t) on the latents of a *trained, frozen* Gaussian diffusion model
(Diffusion-LM): each labelled batch is embedded with the diffusion model's own embedding (x0 as in its
training), noised with its process at a random t, and classified. Sampling then steers the diffusion
model with ``textdiff.core.ClassifierGuidance`` and this classifier's ``nll`` (``textdiff-sample
control.classifier=<this run>``). The official code trains a GPT-2-style model that scores label tokens
after x_t; this is a classification head on the same inputs (a simplification).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdiff.core.control import NllFn
from textdiff.core.types import Batch
from textdiff.families.base import OptimizerFactory, SchedulerFactory
from textdiff.families.classifier import TextClassifier
from textdiff.nn.classifier import LatentClassifier


class NoisyClassifier(TextClassifier):
    """p(class | x_t, t) on the latents of a frozen Gaussian diffusion model with an ``embedding`` and
    ``embed_x0`` (Diffusion-LM).

    Args:
        network: a ``LatentClassifier`` (``(x (B, L, d), time (B,)) -> logits (B, C)``).
        diffusion: the trained diffusion model, built (frozen here: no gradient, kept in eval mode). The config
            builds it from its checkpoint (``model.diffusion.checkpoint``, through ``textdiff.cli.runs.load_model``).
        optimizer, lr_scheduler, ema_decay, label_smoothing, classes: as ``TextClassifier``.
        attribute: "class": the DataModule's labels (``batch["labels"]``); "length": the number of tokens
            between BOS and EOS of each example (``batch["mask"]`` minus the 2 frame tokens), class k = k
            tokens (the last class also takes longer ones); classes are then "0" .. "C-1" and the data
            needs no labels (Diffusion-LM's length control).
    """

    def __init__(self, network: LatentClassifier, diffusion: nn.Module, optimizer: Optional[OptimizerFactory] = None,
                 lr_scheduler: Optional[SchedulerFactory] = None, ema_decay: Optional[float] = None,
                 label_smoothing: float = 0.0, classes: Optional[Sequence[str]] = None,
                 attribute: str = "class") -> None:
        if attribute not in ("class", "length"):
            raise ValueError(f"attribute={attribute!r}; expected 'class' or 'length'")
        if attribute == "length" and classes is None:
            classes = [str(k) for k in range(int(network.num_classes))]
        super().__init__(network, optimizer, lr_scheduler, ema_decay, label_smoothing, classes)
        self.attribute = attribute
        if not isinstance(diffusion, nn.Module):
            raise TypeError("NoisyClassifier needs the trained diffusion model, built "
                            f"(got {type(diffusion).__name__}); "
                            "from a config: model.diffusion.checkpoint=<Diffusion-LM run>/checkpoints/last.ckpt")
        for attr in ("embedding", "embed_x0", "process", "time_input"):
            if not hasattr(diffusion, attr):
                raise TypeError(f"{type(diffusion).__name__} has no `{attr}`: a NoisyClassifier needs an embedding "
                                "diffusion model such as DiffusionLM")
        if (diffusion.embedding.embedding_dim != network.in_dim
            or diffusion.embedding.num_embeddings != network.vocab_size):
            raise ValueError(f"the classifier reads ({network.vocab_size} tokens, d={network.in_dim}) but the "
                             f"diffusion model has ({diffusion.embedding.num_embeddings}, "
                             f"d={diffusion.embedding.embedding_dim}); "
                             "use its tokenizer (data.tokenizer_path=<diffusion run>/tokenizer) and embed_dim")
        self.diffusion = diffusion.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "NoisyClassifier":
        """Switch the classifier's mode; the frozen diffusion model stays in eval mode."""
        super().train(mode)
        self.diffusion.eval()
        return self

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits (B, C) of latents ``x`` (B, L, d) at times ``t`` (B,) in [0, 1]."""
        return self.network(x, self.diffusion.time_input(t)).float()

    def nll(self, label: int | Tensor) -> NllFn:
        """The guidance objective for class ``label`` (an id, or (B,) ids): ``(x, t) -> (B,)`` cross-entropy,
        for ``textdiff.core.ClassifierGuidance``."""
        label = torch.as_tensor(label, dtype=torch.long)

        def nll(x: Tensor, t: Tensor) -> Tensor:
            target = label.to(x.device).expand(x.shape[0]) if label.dim() == 0 else label.to(x.device)
            return F.cross_entropy(self.logits(x, t), target, reduction="none")

        return nll

    def on_fit_start(self) -> None:
        """Class attribute: take the DataModule's class names (``TextClassifier``); length: nothing to take."""
        if self.attribute == "class":
            super().on_fit_start()

    def targets(self, batch: Batch) -> Tensor:
        """The class ids (B,) of a batch: its labels, or its lengths (tokens between BOS and EOS, capped at C-1)."""
        if self.attribute == "length":
            return (batch["mask"].sum(1) - 2).clamp(0, self.num_classes - 1).long()
        if "labels" not in batch:
            raise ValueError("the batch has no `labels`: set data.label_field "
                             "(e.g. data=e2e_class data.label_slot=food)")
        return batch["labels"]

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of the targets (``targets``) of ids (B, L) embedded by the diffusion model (x0 as it
        trains), noised to a random t with its process: scalars "loss" and "acc"."""
        ids, labels = batch["ids"], self.targets(batch)
        with torch.no_grad():
            _, x0 = self.diffusion.embed_x0(ids)
            t = self.diffusion.sample_t(ids.shape[0])
            xt = self.diffusion.process.q_sample(x0, t)
        logits = self.logits(xt, t)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(-1) == labels).float().mean()}

    @torch.no_grad()
    def predict(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Log-probs (B, C) of clean texts: their embeddings at the diffusion model's first step (mask unused:
        padding is part of the latent sequence)."""
        with self.sampling():
            ids = ids.to(self.device)
            emb = self.diffusion.embedding(ids)
            t = self.diffusion.first_step_time(ids.shape[0]).to(self.device)
            return self.logits(emb, t).log_softmax(-1)

    @torch.no_grad()
    def evaluate_on(self, datamodule: Any, *, split: str = "test", num_examples: Optional[int] = None,
                    batch_size: int = 100, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Class attribute: as ``TextClassifier``. Length: accuracy (and mean absolute error, in tokens) of
        the predicted length of the clean latents of ``split``'s batches (all, or the first ``num_examples``)."""
        if self.attribute == "class":
            return super().evaluate_on(datamodule, split=split, num_examples=num_examples, batch_size=batch_size,
                                       seed=seed)
        loader = {"test": datamodule.test_dataloader, "valid": datamodule.val_dataloader}[split]()
        records: list[dict[str, Any]] = []
        for batch in loader:
            pred = self.predict(batch["ids"], batch["mask"]).argmax(-1).cpu()
            for i, p, want in zip(batch["index"].tolist(), pred.tolist(), self.targets(batch).tolist()):
                records.append({"id": i, "length": want, "predicted": p})
            if num_examples is not None and len(records) >= num_examples:
                records = records[:num_examples]
                break
        n = max(len(records), 1)
        return records, {"split": split, "num_examples": len(records),
                         "accuracy": sum(r["length"] == r["predicted"] for r in records) / n,
                         "mean_abs_error": sum(abs(r["length"] - r["predicted"]) for r in records) / n}

    def encode_texts(self, texts: Sequence[str], tokenizer: Any, max_len: Optional[int] = None) -> list[list[int]]:
        """As ``TextClassifier.encode_texts``, then padded with PAD to the network's ``max_len`` (the fixed
        length of the diffusion model's sequences)."""
        L = int(max_len or self.max_len)
        return [seq + [tokenizer.pad_id] * (L - len(seq)) for seq in super().encode_texts(texts, tokenizer, L)]
