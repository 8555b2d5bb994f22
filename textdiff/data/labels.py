"""Class labels of unconditional text (LD4LG's class-conditional generation, the classifier judge): which
field holds each example's class, E2E meaning-representation slots, the class list and the per-example ids.
``TextDataModule`` mixes this in; the methods rely on its ``raw(split)``, ``where(split)`` and
``max_train_examples``."""
from __future__ import annotations

import logging
from typing import Sequence

from textdiff.data.sources import DataError, parse_mr

logger = logging.getLogger("textdiff.data")


class LabelsMixin:
    """Labels from ``label_field`` (optionally the ``label_slot`` of an E2E MR); see ``TextDataModule``."""

    def _init_labels(self, label_field: str | None, label_slot: str | None, classes: Sequence[str] | None,
                     missing_label: str | None, padding: str) -> None:
        if label_field is None:
            given = {"label_slot": label_slot, "classes": classes, "missing_label": missing_label}
            if any(v is not None for v in given.values()):
                used = ", ".join(k for k, v in given.items() if v is not None)
                raise ValueError(f"{used} given but label_field is None (which field holds the "
                                 "label?)")
        elif padding != "pad":
            raise ValueError(f"label_field={label_field!r} needs padding='pad': with padding="
                             f"{padding!r} a block mixes several examples, so it has no label")
        if missing_label is not None and label_slot is None:
            raise ValueError("missing_label applies to examples whose MR lacks label_slot; "
                             "set label_slot too")
        if classes is not None:
            classes = [str(c) for c in classes]
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(f"classes must be a non-empty list of distinct names, got "
                                 f"{classes}")
            if missing_label is not None and missing_label not in classes:
                raise ValueError(f"missing_label={missing_label!r} is not one of classes={classes}")
        self.label_field, self.label_slot = label_field, label_slot
        self.missing_label = missing_label
        self._classes: list[str] | None = classes
        self._classes_given = classes is not None
        self._label_names: dict[str, list[str | None]] = {}
        self._labels: dict[str, list[int]] = {}

    # ----- labels -----
    def label_names(self, split: str) -> list[str | None]:
        """Per raw example of ``split`` (N,), its class name; None where the MR lacks
        ``label_slot`` and ``missing_label`` is None (such examples are dropped from batches)."""
        if self.label_field is None:
            raise DataError(f"{type(self).__name__} has no labels: set label_field "
                            "(e.g. data.label_field=mr data.label_slot=eatType)")
        if split not in self._label_names:
            names: list[str | None] = []
            for i, (_, value) in enumerate(self.raw(split)):
                where = f"{self.where(split)}: example index {i}"
                if not isinstance(value, str):
                    raise DataError(f"{where}: label field {self.label_field!r} holds a list "
                                    f"({str(value)[:80]!r}); a label must be one string")
                if self.label_slot is None:
                    names.append(value.strip())
                    continue
                names.append(parse_mr(value, where).get(self.label_slot, self.missing_label))
            self._label_names[split] = names
        return self._label_names[split]

    @property
    def classes(self) -> list[str]:
        """Class names in id order (C,): ``classes`` as given, else the sorted distinct labels of
        the training split (read on first use). ``[]`` without ``label_field``."""
        if self.label_field is None:
            return []
        if self._classes is None:
            found = sorted({n for n in self.label_names("train") if n is not None})
            if not found:
                raise DataError(f"{self.where('train')}: no example has a {self.label_slot!r} slot "
                                f"in field {self.label_field!r}, so there are no classes")
            logger.info("%s: %d classes from the training split: %s", self.where("train"),
                        len(found), found)
            if len(found) < 2:
                logger.warning("%s: a single class %s (max_train_examples=%s keeps the first "
                               "examples; pass `classes` to fix the class list)",
                               self.where("train"), found, self.max_train_examples)
            self._classes = found
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        """C, the number of classes; 0 without ``label_field``."""
        return len(self.classes)

    def labels(self, split: str) -> list[int]:
        """Per raw example of ``split`` (N,), its class id in :attr:`classes`, so that
        ``labels(split)[batch["index"]]`` lines up with ``batch["labels"]``; -1 for an example
        without a label (MR lacking ``label_slot`` with ``missing_label=None``: dropped).

        Raises:
            DataError: a label is not one of :attr:`classes` (the split and example index named).
        """
        if split not in self._labels:
            ids = {name: c for c, name in enumerate(self.classes)}
            out = []
            for i, name in enumerate(self.label_names(split)):
                if name is not None and name not in ids:
                    source = "data.classes" if self._classes_given else "the training split"
                    raise DataError(
                        f"{self.where(split)}: example index {i} has label {name!r}, which is not "
                        f"one of the {len(ids)} classes {list(ids)} (from {source}); fix the data "
                        "or pass `classes` listing every label")
                out.append(-1 if name is None else ids[name])
            self._labels[split] = out
        return list(self._labels[split])
