"""A text classifier trained on clean text, to score the class accuracy of generated samples.

LD4LG's class-conditional generation (and the controllable-generation evaluation) asks whether a
sample generated for class c reads as class c: a ``TextClassifier`` trained on the real training texts
of a labelled DataModule (``TextDataModule(label_field=..., label_slot=...)``; e.g. E2E's ``eatType``)
answers it with ``classify_texts``. Training minimises the (optionally label-smoothed) cross-entropy
of ``network(ids, mask)`` against ``batch["labels"]``.

The class names (``classes``, in class-id order) come from the DataModule when fitting and are saved in
the checkpoint, so a loaded classifier maps its outputs back to names without the training data.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.core.types import Batch
from textdiff.families.base import CHECKPOINT_KEY, OptimizerFactory, SchedulerFactory, TextModule
from textdiff.nn.classifier import TransformerClassifier


class TextClassifier(TextModule):
    """Sequence classifier over token ids (not a generator: ``evaluate`` calls its ``evaluate_on``).

    Args:
        network: a ``TransformerClassifier`` (any module ``(ids (B, L), mask (B, L)) -> logits (B, C)``
            with ``vocab_size``, ``num_classes`` and ``max_len`` attributes).
        optimizer, lr_scheduler, ema_decay: see ``TextModule``.
        label_smoothing: eps of the training cross-entropy (0 = plain CE).
        classes: the class names in id order (C,); None = taken from the DataModule at the start of
            ``fit`` (``trainer.datamodule.classes``) and then kept in checkpoints.
    """

    def __init__(
        self,
        network: TransformerClassifier,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        ema_decay: Optional[float] = None,
        label_smoothing: float = 0.0,
        classes: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.network = network
        self.vocab_size = int(network.vocab_size)
        self.num_classes = int(network.num_classes)
        self.max_len = int(network.max_len)
        self.label_smoothing = float(label_smoothing)
        self.classes: Optional[list[str]] = None
        if classes is not None:
            self.classes = self._check_classes(classes, "classes")

    # ----- class names -----
    def _check_classes(self, classes: Sequence[str], where: str) -> list[str]:
        names = [str(c) for c in classes]
        if len(names) != self.num_classes:
            raise ValueError(f"{where} has {len(names)} classes {names} but the network predicts "
                             f"{self.num_classes} (network.num_classes)")
        return names

    def _adopt_classes(self, classes: Sequence[str], where: str) -> None:
        """Keep ``classes`` (C,) as this model's names, or check them against the names it has."""
        names = self._check_classes(classes, where)
        if self.classes is not None and names != self.classes:
            raise ValueError(f"{where} has classes {names} but this classifier was trained with "
                             f"{self.classes} (same names in the same order are needed)")
        self.classes = names

    def class_names(self, datamodule: Any = None) -> list[str]:
        """The class names (C,): this model's, else the DataModule's (checked against each other)."""
        if datamodule is not None and getattr(datamodule, "num_classes", 0):
            self._adopt_classes(datamodule.classes, f"{type(datamodule).__name__}")
        if self.classes is None:
            return [str(c) for c in range(self.num_classes)]
        return list(self.classes)

    def on_fit_start(self) -> None:
        """Take (or check) the class names of the trainer's DataModule."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "num_classes"):
            if not dm.num_classes:
                raise ValueError("the data config has no label_field: a TextClassifier needs labelled "
                                 "batches (e.g. data.label_field=mr data.label_slot=eatType)")
            if dm.num_classes < 2:
                raise ValueError(f"the training split has only the class {dm.classes}: a classifier needs at "
                                 "least 2 (max_train_examples keeps the first examples; E2E's train file is "
                                 "grouped by MR, so a small cap may hold a single class)")
            self._adopt_classes(dm.classes, "the DataModule")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY]["classes"] = self.classes

    def _adopt_saved_classes(self, checkpoint: dict[str, Any]) -> None:
        classes = checkpoint.get(CHECKPOINT_KEY, {}).get("classes")
        if classes is not None:
            self._adopt_classes(classes, "the checkpoint")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._adopt_saved_classes(checkpoint)

    def load_weights(self, path: str, strict: bool = True) -> dict[str, Any]:
        """``TextModule.load_weights`` plus the class names saved in the checkpoint."""
        ckpt = super().load_weights(path, strict=strict)
        self._adopt_saved_classes(ckpt)
        return ckpt

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of a labelled batch: ``ids``/``mask`` (B, L), ``labels`` (B,) long.

        Returns:
            scalars: "loss" (label-smoothed CE, mean over the batch) and "acc" (fraction of argmax
            predictions equal to the label).
        """
        if "labels" not in batch:
            raise ValueError("the batch has no `labels`: the data config has no label_field (a TextClassifier "
                             "needs e.g. data.label_field=mr data.label_slot=eatType)")
        labels = batch["labels"]
        logits = self.network(batch["ids"], batch["mask"]).float()  # (B, C)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc}

    # ----- inference -----
    @torch.no_grad()
    def predict(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Class log-probabilities in eval mode (dropout off; the training mode is restored).

        Args:
            ids: (B, L) long, BOS ... EOS then PAD, L <= the network's ``max_len``.
            mask: (B, L) bool, True on real tokens.

        Returns:
            (B, C) float log-probs.
        """
        with self.sampling():
            return self.network(ids.to(self.device), mask.to(self.device)).float().log_softmax(-1)

    def encode_texts(self, texts: Sequence[str], tokenizer: Any, max_len: Optional[int] = None
                     ) -> list[list[int]]:
        """Token ids of each text framed as the DataModule frames it, ``[BOS] tokens [EOS]``, cut to
        ``max_len`` (default: the network's) by keeping the first ``max_len - 1`` tokens and EOS."""
        L = self.max_len if max_len is None else int(max_len)
        if not 2 <= L <= self.max_len:
            raise ValueError(f"max_len={L} must be in [2, {self.max_len}] (the network's max_len)")
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        out = []
        for ids in tokenizer.encode_batch(list(texts)):
            seq = [bos, *ids, eos]
            out.append(seq if len(seq) <= L else seq[: L - 1] + [eos])
        return out

    @torch.no_grad()
    def classify_texts(self, texts: Sequence[str], tokenizer: Any, batch_size: int = 128,
                       max_len: Optional[int] = None) -> list[int]:
        """The predicted class id of each text (N,), ids into ``classes``.

        Args:
            texts: N strings (e.g. decoded samples); an empty string is classified as ``[BOS][EOS]``.
            tokenizer: the tokenizer this classifier was trained with (its run's ``tokenizer/``).
            batch_size: texts per forward pass.
            max_len: truncation length, BOS/EOS included (default: the network's ``max_len``).
        """
        from textdiff.core.types import pad_sequences

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        seqs = self.encode_texts(texts, tokenizer, max_len)
        out: list[int] = []
        for start in range(0, len(seqs), int(batch_size)):
            ids, mask = pad_sequences(seqs[start:start + int(batch_size)], tokenizer.pad_id)
            out.extend(self.predict(ids, mask).argmax(-1).tolist())
        return out

    @torch.no_grad()
    def evaluate_on(self, datamodule: Any, *, split: str = "test", num_examples: Optional[int] = None,
                    batch_size: int = 100, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Classify the labelled examples of ``split`` (``textdiff.run.evaluation.evaluate`` calls this).

        Args:
            datamodule: a labelled DataModule (``num_classes > 0``); its classes must equal this model's.
            split: "train", "valid" or "test".
            num_examples: evaluate a random subset of this many examples (drawn with ``seed``, kept in
                split order); None or at least the split's size = every labelled example.
            batch_size: examples per forward pass.
            seed: seeds the subset draw (the classification itself is deterministic).

        Returns:
            records ``{"id": index in the split, "text", "label", "predicted"}`` (class names), and metrics
            ``{"split", "num_examples", "accuracy", "per_class_accuracy": {name: accuracy or None when
            the split has no example of that class}, "class_counts": {name: n}, "majority_class",
            "majority_baseline", "split_majority_baseline"}``; the majority baseline is the accuracy of
            always predicting the most frequent training class, the split majority baseline that of
            always predicting the split's own most frequent class.
        """
        from torch.utils.data import DataLoader

        if not getattr(datamodule, "num_classes", 0):
            raise ValueError("the data config has no label_field: cannot evaluate a classifier without labels")
        names = self.class_names(datamodule)
        items = datamodule.dataset(split)
        if num_examples is not None and int(num_examples) < len(items):
            gen = torch.Generator().manual_seed(int(seed))
            keep = sorted(torch.randperm(len(items), generator=gen)[: int(num_examples)].tolist())
            items = [items[i] for i in keep]
        loader = DataLoader(items, batch_size=int(batch_size), shuffle=False, collate_fn=datamodule.collator())
        texts = datamodule.texts(split)
        records: list[dict[str, Any]] = []
        for batch in loader:
            predicted = self.predict(batch["ids"], batch["mask"]).argmax(-1).tolist()
            for i, y, p in zip(batch["index"].tolist(), batch["labels"].tolist(), predicted):
                records.append({"id": i, "text": texts[i], "label": names[y], "predicted": names[p]})
        correct = [r["label"] == r["predicted"] for r in records]
        counts = Counter(r["label"] for r in records)
        hits = Counter(r["label"] for r in records if r["label"] == r["predicted"])
        train_counts = Counter(c for c in datamodule.labels("train") if c >= 0)
        majority = names[train_counts.most_common(1)[0][0]] if train_counts else None
        metrics: dict[str, Any] = {
            "split": split,
            "num_examples": len(records),
            "accuracy": sum(correct) / max(len(records), 1),
            "per_class_accuracy": {n: (hits[n] / counts[n] if counts[n] else None) for n in names},
            "class_counts": {n: counts[n] for n in names},
            "majority_class": majority,
            "majority_baseline": counts[majority] / max(len(records), 1) if majority is not None else None,
            # the best any constant prediction can do on this split (E2E's devset holds 1-2 classes per slot)
            "split_majority_baseline": max(counts.values(), default=0) / max(len(records), 1),
        }
        return records, metrics
