"""``make test-presets``: every file in ``conf/experiment/`` runs two optimizer steps and one generate (or
evaluation) call on CPU at the preset's own network size and sequence length, and the measurements go to
``benchmarks/results/presets_cpu.json`` and the tables of ``experiments/README.md``
(section "Every preset at its full size"). Presets not run keep their entries (``--only`` reruns a few).

    python -m benchmarks.presets [--only PATTERNS] [--out FILE] [--readme FILE] [--workdir DIR]

How a preset runs. The driver (this module's ``main``) starts two processes per preset, one after the other: a
planning process (``--plan``) composes ``experiment=<preset>`` with Hydra as ``textdiff-train`` does, builds the
stand-ins it needs and writes the overrides that put them in place of what the CPU machine cannot reach (below);
a worker process (``--worker``) composes the same overrides plus the run-shape ones and calls
``textdiff.cli.train.train`` -- the function behind ``textdiff-train`` -- so the data, tokenizer, model, Lightning
``Trainer`` (precision included: ``bf16-mixed`` runs under Lightning's bf16 autocast on CPU) and the evaluation
after ``fit`` are the project's own. Run-shape overrides: ``trainer.max_steps=2`` on ``accelerator=cpu``, no
validation, no gradient accumulation (``global_batch_size=null``: MDLM's presets fill a global batch of 512 by
accumulation, which at the run's batch of 2 made each step hundreds of micro-batches), no loggers, none of the
preset's callbacks (checkpoints, sampling during validation) but
``benchmarks.preset_probe.StepProbe``, which measures (a model's own callbacks, e.g. EMA, stay);
``data.pad_to_max=true`` so every batch has the preset's full length L (and source length S);
``data.num_workers=0``; evaluation of 2 samples (or sources, or examples) with no NLL bound: one ``generate``
call (``evaluate_on`` for autoencoders and classifiers). The batch is the preset's own for CPU presets in fp32, and
``GPU_BATCH`` (``BF16_BATCH`` under bf16 autocast, which this CPU runs about 20x slower than fp32) for GPU presets;
the table says which batch ran. Network sizes and L/S are never changed.

Stand-ins (``benchmarks/standins.py``, built once into ``<workdir>/standins/``):

- hub models (``bert-base-uncased``, ``facebook/bart-base``, ``gpt2``): the same architecture at the hub
  configuration, random weights, with a tokenizer of the same vocabulary size and special ids (``HUB_MODELS``);
  a preset that names one only for its tokenizer (``mdlm_owt``: GPT-2's) reads the stand-in's tokenizer;
- hub datasets (``conf/data`` files with ``hf_dataset``, and ``PRESET_DATASETS``: OpenWebText, which ``mdlm_owt``
  names over its data file's): a local folder of the same columns and splits, a few hundred rows of real text
  (OpenWebText: 100,400 documents, so that its held-out ``train[-100000:]`` leaves a training part), read by the
  same ``datasets.load_dataset`` path; a BPE tokenizer the preset trains on the hub corpus (``vocab_size``
  10k-32k) is trained on the stand-in's text and filled up to that size;
- ROCStories (``train_path: ???``): a file of five-sentence lines of real text;
- runs a preset builds on (``CHAINS``, ``DIFFUSION_RUNS``, ``COMPARE_TOKENIZERS``): LD4LG stage-0 BART exports
  and stage-1 checkpoints, a Diffusion-LM run for the control presets, and the cross-family comparison's shared
  tokenizers -- each built *untrained* from the preset that makes it (same command-line overrides as the
  documented chains), at that preset's size.

A preset that cannot run on CPU carries a header line ``# test-presets: not on CPU: <reason>``; it is listed
with the reason and not run. Any other failure makes the command exit 1.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks.standins import FILE_DATASETS, HUB_DATASETS, HUB_MODELS, PRESET_DATASETS, StandInError, dataset_spec

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
RESULT = REPO / "benchmarks" / "results" / "presets_cpu.json"
WORKDIR = REPO / "outputs" / "test_presets"
STEPS = 2
GPU_BATCH = 8
BF16_BATCH = 2
EVAL_SAMPLES = 2
TIMEOUT_S = 4 * 3600
NOT_ON_CPU = re.compile(r"^#\s*test-presets:\s*not on CPU:\s*(.+?)\s*$", re.MULTILINE)
TABLE_BEGIN, TABLE_END = "<!-- test-presets table: begin -->", "<!-- test-presets table: end -->"


def experiments() -> list[str]:
    """Every preset, ``conf/experiment/*.yaml``, by name, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def not_on_cpu(preset: str) -> Optional[str]:
    """The reason in the preset's ``# test-presets: not on CPU: <reason>`` header line, else None."""
    found = NOT_ON_CPU.search((CONF_DIR / "experiment" / f"{preset}.yaml").read_text(encoding="utf-8"))
    return found.group(1) if found else None


def select(patterns: Optional[str]) -> list[str]:
    """The presets matching any of the comma-separated shell patterns (``diffusion_bert_*,ar_multi30k``); all
    when None. Raises ValueError for a pattern that matches none."""
    names = experiments()
    if not patterns:
        return names
    chosen: list[str] = []
    for pat in (p.strip() for p in patterns.split(",") if p.strip()):
        hits = fnmatch.filter(names, pat)
        if not hits:
            raise ValueError(f"--only: no preset in conf/experiment/ matches {pat!r}")
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------------------
# what each preset builds on
# ----------------------------------------------------------------------------------------------------------
BART_BASE_SHAPE = ("model.bart.d_model=768", "model.bart.encoder_layers=6", "model.bart.decoder_layers=6",
                   "model.bart.encoder_attention_heads=12", "model.bart.decoder_attention_heads=12",
                   "model.bart.encoder_ffn_dim=3072", "model.bart.decoder_ffn_dim=3072")
"""experiments/compare/scale.sh's ``bart`` array: the GPU comparison's bart-base-shaped stage-0 BART."""


@dataclass(frozen=True)
class Chain:
    """LD4LG's stage-0 BART and stage-1 autoencoder as a stage-1 or stage-2 preset expects them, built untrained:
    ``stage0`` (a stage-0 preset, exported with ``save_artifacts``, or a hub name of ``HUB_MODELS``) and
    ``stage1`` (the stage-1 preset on it, saved as ``<run>/checkpoints/last.ckpt`` with ``<run>/tokenizer``).
    ``overrides`` apply to both stages, ``stage0_overrides`` to stage 0 only; ``tokenizer`` names a shared
    tokenizer of ``COMPARE_TOKENIZERS`` both stages use (``data.tokenizer_path``)."""

    stage0: str
    stage1: str
    overrides: tuple[str, ...] = ()
    stage0_overrides: tuple[str, ...] = ()
    tokenizer: Optional[str] = None
    doc: str = ""


_E2E_REFS = ("data=e2e", "data.padding=pad")
CHAINS: dict[str, Chain] = {
    "tatoeba_cpu": Chain("ld4lg_bart_tatoeba_cpu", "ld4lg_ae_tatoeba_cpu",
                         doc="ld4lg_tatoeba_cpu's comment: stages 0-1 on Tatoeba"),
    "e2e_class_cpu": Chain("ld4lg_bart_e2e_cpu", "ld4lg_ae_e2e_cpu",
                           doc="ld4lg_bart_e2e_cpu's comment: stages 0-1 on E2E references with an eatType"),
    "e2e_cpu": Chain("ld4lg_bart_e2e_cpu", "ld4lg_ae_e2e_cpu", _E2E_REFS,
                     doc="ld4lg_e2e_cpu's comment: stages 0-1 with data=e2e data.padding=pad"),
    "compare_e2e_cpu": Chain("ld4lg_bart_e2e_cpu", "ld4lg_ae_e2e_cpu", (*_E2E_REFS, "data.max_len=48"),
                             tokenizer="e2e", doc="experiments/compare/e2e_cpu.sh, SCALE=cpu"),
    "compare_e2e_gpu": Chain("ld4lg_bart_e2e_cpu", "ld4lg_ae_e2e_cpu", (*_E2E_REFS, "data.max_len=48"),
                             BART_BASE_SHAPE, tokenizer="e2e", doc="experiments/compare/e2e_cpu.sh, SCALE=gpu"),
    "compare_tatoeba_cpu": Chain("ld4lg_bart_tatoeba_cpu", "ld4lg_ae_tatoeba_cpu", tokenizer="tatoeba",
                                 doc="experiments/compare/tatoeba_cpu.sh, SCALE=cpu"),
    "compare_tatoeba_gpu": Chain("ld4lg_bart_tatoeba_cpu", "ld4lg_ae_tatoeba_cpu", (), BART_BASE_SHAPE,
                                 tokenizer="tatoeba", doc="experiments/compare/tatoeba_cpu.sh, SCALE=gpu"),
    "bart_base_rocstories": Chain("facebook/bart-base", "ld4lg_ae_rocstories",
                                  doc="ld4lg_rocstories's comment: stage 1 ld4lg_ae_rocstories"),
    "bart_base_ag_news": Chain("facebook/bart-base", "ld4lg_ae_rocstories", ("data=ag_news",),
                               doc="ld4lg_ag_news_class's comment: ld4lg_ae_rocstories with data=ag_news"),
    "bart_base_xsum": Chain("facebook/bart-base", "ld4lg_ae_rocstories", ("data=xsum",),
                            doc="ld4lg_xsum's comment: ld4lg_ae_rocstories with data=xsum"),
}

COMPARE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    # experiments/compare/e2e_cpu.sh step 0 (the tokenizer goes to compare.tokenizer)
    "e2e": ("experiment=compare_e2e_ar_cpu", "compare=e2e_cpu", "compare.ld4lg_autoencoder=null"),
    # experiments/compare/tatoeba_cpu.sh step 0 (the tokenizer goes to data.tokenizer_path)
    "tatoeba": ("experiment=ar_lm_tatoeba_cpu", "+data.tokenizer.add_mask_token=true"),
}

DIFFUSION_RUNS: dict[str, tuple[str, ...]] = {
    # the control presets' comments: a trained `experiment=diffusion_lm_e2e_cpu` run
    "diffusion_lm_e2e_cpu": ("experiment=diffusion_lm_e2e_cpu",),
}


@dataclass(frozen=True)
class Plan:
    """What a preset needs beyond its own file: fixed Hydra ``overrides``; ``chain`` (its stage-1 checkpoint
    goes to ``model.autoencoder_path``, or ``compare.ld4lg_autoencoder`` for a comparison entrant); ``bart_of``
    (that chain's stage-0 export goes to ``model.bart_path``); ``diffusion`` (a ``DIFFUSION_RUNS`` checkpoint for
    ``model.diffusion.checkpoint``); ``compare_tokenizer`` (a ``COMPARE_TOKENIZERS`` directory for
    ``compare.tokenizer``)."""

    overrides: tuple[str, ...] = ()
    chain: Optional[str] = None
    bart_of: Optional[str] = None
    diffusion: Optional[str] = None
    compare_tokenizer: Optional[str] = None


PLANS: dict[str, Plan] = {
    "ld4lg_tatoeba_cpu": Plan(chain="tatoeba_cpu"),
    "ld4lg_e2e_cpu": Plan(chain="e2e_cpu"),
    "ld4lg_e2e_class_cpu": Plan(chain="e2e_class_cpu"),
    "ld4lg_e2e_seq2seq_cpu": Plan(chain="compare_e2e_cpu"),  # its comment: stages 0-1 on the shared E2E tokenizer
    "ld4lg_ae_tatoeba_cpu": Plan(bart_of="tatoeba_cpu"),
    "ld4lg_ae_e2e_cpu": Plan(bart_of="e2e_class_cpu"),
    "ld4lg_rocstories": Plan(chain="bart_base_rocstories"),
    "ld4lg_ag_news_class": Plan(chain="bart_base_ag_news"),
    "ld4lg_xsum": Plan(chain="bart_base_xsum"),
    "diffusion_lm_e2e_control_cpu": Plan(diffusion="diffusion_lm_e2e_cpu"),
    "diffusion_lm_e2e_length_cpu": Plan(diffusion="diffusion_lm_e2e_cpu"),
}


def plan_for(preset: str) -> Plan:
    """The ``Plan`` of a preset: ``PLANS``, or for ``compare_<table>_<family>_<scale>`` the comparison's
    ``compare=<table>_<scale>`` with its shared tokenizer (and LD4LG's chain at that scale)."""
    if preset in PLANS:
        return PLANS[preset]
    found = re.fullmatch(r"compare_(e2e|tatoeba)_(\w+)_(cpu|gpu)", preset)
    if found:
        table, family, scale = found.groups()
        chain = f"compare_{table}_{scale}" if family.startswith("ld4lg") else None
        return Plan(overrides=(f"compare={table}_{scale}", "compare.judge=null"), chain=chain,
                    compare_tokenizer=table)
    return Plan()


# ----------------------------------------------------------------------------------------------------------
# composing configs
# ----------------------------------------------------------------------------------------------------------
def compose(overrides: list[str]) -> tuple[Any, dict[str, str]]:
    """``textdiff-train``'s config for ``overrides`` (Hydra's compose API on ``conf/``), without the ``hydra``
    node, and the chosen config group files (``{"data": "lm1b", ...}``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from textdiff.cli.common import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    choices = {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items() if v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (not interpolations that point at one)."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(full)
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_interpolation():
            out += missing_keys(node, f"{full}.")
    return out


def raw_strings(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Every string leaf of ``cfg`` that is not an interpolation, by dotted key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: dict[str, str] = {}
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            continue
        node = cfg._get_node(key)
        if node._is_interpolation():
            continue
        if isinstance(node, DictConfig):
            out.update(raw_strings(node, f"{full}."))
        elif not isinstance(node, ListConfig) and isinstance(node._value(), str):
            out[full] = node._value()
    return out


HUB_KEYS = ("data.tokenizer", "data.tokenizer.name_or_path", "model.network.bert", "model.bart_path")
"""Config keys that take a hub model name or a local directory."""


# ----------------------------------------------------------------------------------------------------------
# stand-ins, built once
# ----------------------------------------------------------------------------------------------------------
class StandIns:
    """Builds (once, into ``root``) and returns the stand-ins presets need. Each is written into a temporary
    sibling and renamed when complete, so a killed build leaves nothing half-made. ``data_sizes`` (rows per split
    of the dataset stand-ins) is for the harness's unit test; the default is ``standins.SPLIT_SIZES``."""

    def __init__(self, root: Path, shared: Path, data_sizes: Optional[dict[str, int]] = None) -> None:
        self.root, self.shared = Path(root), Path(shared)
        self.data_sizes = data_sizes
        self.root.mkdir(parents=True, exist_ok=True)

    def _once(self, rel: str, build: Any) -> Path:
        final = self.root / rel
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def hub_model(self, name: str) -> Path:
        """A ``save_pretrained`` directory (model + tokenizer) standing in for hub model ``name``."""
        from benchmarks.standins import build_hub_model, english_text

        return self._once(f"hub/{name.replace('/', '--')}",
                          lambda d: build_hub_model(name, d, english_text(self.shared)))

    def hub_dataset(self, key: str) -> Path:
        """A ``datasets.load_dataset`` folder standing in for the hub dataset of ``conf/data/<key>.yaml`` or
        named ``key`` (``standins.PRESET_DATASETS``)."""
        from benchmarks.standins import build_hub_dataset

        return self._once(f"data/{key.replace('/', '--')}",
                          lambda d: build_hub_dataset(key, d, self.shared, self.data_sizes))

    def files(self, group: str) -> dict[str, Path]:
        """Local files standing in for a user-supplied corpus (``FILE_DATASETS``): ``{"train": path, ...}``."""
        from benchmarks.standins import build_rocstories

        if group != "rocstories":
            raise KeyError(f"no file stand-in for data={group}")
        folder = self._once("data/rocstories", lambda d: build_rocstories(d, self.shared, self.data_sizes))
        return {s: folder / f"{s}.txt" for s in ("train", "valid", "test")}

    def bpe_tokenizer(self, cfg: Any, group: str, vocab_size: int) -> Path:
        """The BPE tokenizer ``cfg.data`` trains (on the stand-in's training text), filled up to ``vocab_size``."""
        from benchmarks.standins import pad_vocabulary
        from textdiff.cli.common import build

        def make(d: Path) -> None:
            with tempfile.TemporaryDirectory() as trained:
                tok = build(cfg, "data", tokenizer_path=trained).build_tokenizer()
                pad_vocabulary(tok, vocab_size).save(d)

        return self._once(f"tokenizers/{group}_bpe{vocab_size}", make)

    def compare_tokenizer(self, table: str) -> Path:
        """The cross-family comparison's shared tokenizer of ``table`` (``COMPARE_TOKENIZERS``)."""
        from textdiff.cli.common import build_datamodule

        def make(d: Path) -> None:
            key = "compare.tokenizer" if table == "e2e" else "data.tokenizer_path"
            with tempfile.TemporaryDirectory() as run:
                cfg, _ = compose([*COMPARE_TOKENIZERS[table], f"{key}={d}", f"paths.output_dir={run}"])
                build_datamodule(cfg, Path(run))
            if not any(d.iterdir()):
                raise RuntimeError(f"the {table} comparison tokenizer was not written to {d}")

        return self._once(f"tokenizers/compare_{table}", make)

    def diffusion_run(self, key: str) -> Path:
        """``<run>/checkpoints/last.ckpt`` of an untrained run of ``DIFFUSION_RUNS[key]`` (config.yaml and tokenizer/
        beside it, as ``textdiff-train`` leaves them)."""
        run = self._once(f"runs/{key}", lambda d: save_untrained_run(list(DIFFUSION_RUNS[key]), d, self))
        return run / "checkpoints" / "last.ckpt"

    def chain(self, key: str) -> tuple[Path, Path]:
        """``(stage-0 BART directory, stage-1 checkpoint)`` of ``CHAINS[key]``."""
        chain = CHAINS[key]
        shared_tok: list[str] = []
        if chain.tokenizer:
            shared_tok = [f"data.tokenizer_path={self.compare_tokenizer(chain.tokenizer)}"]
        if chain.stage0 in HUB_MODELS:
            bart = self.hub_model(chain.stage0)
        else:
            def stage0(d: Path) -> None:
                from textdiff.cli.common import build, build_datamodule

                cfg, _, _ = compose_standins([f"experiment={chain.stage0}", *chain.overrides,
                                              *chain.stage0_overrides, *shared_tok, f"paths.output_dir={d}"], self)
                dm = build_datamodule(cfg, d)
                build(cfg, "model").save_artifacts(d, dm.tokenizer)

            bart = self._once(f"ld4lg/{key}/stage0", stage0) / "bart"
        # (the CPU stage-1 presets read their tokenizer from the BART's directory: tokenizer_path=${model.bart_path})
        overrides = [f"experiment={chain.stage1}", *chain.overrides, f"model.bart_path={bart}"]
        ae = self._once(f"ld4lg/{key}/stage1", lambda d: save_untrained_run(overrides, d, self))
        return bart, ae / "checkpoints" / "last.ckpt"


def save_untrained_run(overrides: list[str], run_dir: Path, standins: StandIns) -> None:
    """A run directory as ``textdiff-train <overrides>`` leaves it, without training: ``config.yaml``,
    ``tokenizer/`` and ``checkpoints/last.ckpt`` of the freshly built (random) model."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from textdiff.cli.common import build, build_datamodule

    cfg, _, _ = compose_standins([*overrides, f"paths.output_dir={run_dir}"], standins)
    build_datamodule(cfg, run_dir)
    model = build(cfg, "model")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def standin_overrides(cfg: Any, choices: dict[str, str], standins: StandIns) -> tuple[list[str], list[str]]:
    """Overrides that put local stand-ins in place of the hub datasets, user-supplied corpora and hub models
    ``cfg`` names, and a description of each. Raises StandInError for a hub name without a stand-in."""
    from omegaconf import OmegaConf

    overrides, notes = [], []
    group = choices.get("data", "")
    hub_name = OmegaConf.select(cfg, "data.hf_dataset")
    if hub_name:
        key = hub_name if hub_name in PRESET_DATASETS else group
        try:
            spec = dataset_spec(key)
        except StandInError as err:
            raise StandInError(f"data={group} reads the hub dataset {hub_name!r}: {err}") from None
        folder = standins.hub_dataset(key)
        overrides += [f"data.hf_dataset={folder}", "++data.hf_config=null"]
        notes.append(f"data: {spec.hub} -> {len(_read(folder / 'train.jsonl'))} train rows of {spec.source} "
                     f"({spec.columns})")
    elif group in FILE_DATASETS and OmegaConf.is_missing(cfg.data, "train_path"):
        files = standins.files(group)
        overrides += [f"data.{s}_path={p}" for s, p in files.items()]
        notes.append(f"data: {FILE_DATASETS[group]}")
    strings = raw_strings(cfg)
    for key in HUB_KEYS:
        value = strings.get(key)
        if value is None or Path(value).expanduser().exists():
            continue
        if value not in HUB_MODELS:
            raise StandInError(f"{key}={value!r} is neither a local path nor a hub model with a stand-in "
                               f"(benchmarks/standins.py HUB_MODELS: {sorted(HUB_MODELS)})")
        overrides.append(f"{key}={standins.hub_model(value)}")
        hub = HUB_MODELS[value]
        if any(n.split(": ", 1)[1].startswith(f"{value} -> random") for n in notes):
            notes.append(f"{key}: {value} -> the same stand-in")
        else:
            notes.append(f"{key}: {value} -> random {hub.architecture} of its configuration "
                         f"({_shape(hub.config)}) and a {hub.tokenizer} tokenizer of {hub.vocab_size} entries")
    return overrides, notes


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _shape(config: dict[str, Any]) -> str:
    keys = ("vocab_size", "hidden_size", "d_model", "num_hidden_layers", "encoder_layers", "decoder_layers",
            "num_attention_heads", "encoder_attention_heads", "intermediate_size", "encoder_ffn_dim",
            "max_position_embeddings")
    return ", ".join(f"{k} {config[k]}" for k in keys if k in config)


def compose_standins(overrides: list[str], standins: StandIns) -> tuple[Any, list[str], list[str]]:
    """``compose(overrides)`` with every stand-in in place (building what is missing). Returns the config, the
    full override list (``overrides`` + stand-in overrides) whose composition it is, and a note on each stand-in."""
    cfg, choices = compose(overrides)
    extra, notes = standin_overrides(cfg, choices, standins)
    if extra:
        cfg, choices = compose([*overrides, *extra])
    bpe = _bpe_tokenizer_override(cfg, choices, standins)
    if bpe:
        extra.append(bpe)
        notes.append(f"data.tokenizer_path: the preset's BPE trained on the stand-in's text, filled to "
                     f"{cfg.data.tokenizer.vocab_size} entries")
        cfg, choices = compose([*overrides, *extra])
    return cfg, [*overrides, *extra], notes


def _bpe_tokenizer_override(cfg: Any, choices: dict[str, str], standins: StandIns) -> Optional[str]:
    """For hub data whose tokenizer is a BPE the DataModule trains (``build_bpe_tokenizer``) to ``vocab_size``:
    the override that gives the stand-in BPE of exactly that size as ``data.tokenizer_path``."""
    from omegaconf import OmegaConf

    group = choices.get("data", "")
    target = OmegaConf.select(cfg, "data.tokenizer._target_", default="")
    if group not in HUB_DATASETS or not str(target).endswith("build_bpe_tokenizer"):
        return None
    if OmegaConf.select(cfg, "data.tokenizer_path"):
        return None
    size = int(OmegaConf.select(cfg, "data.tokenizer.vocab_size"))
    return f"data.tokenizer_path={standins.bpe_tokenizer(cfg, group, size)}"


# ----------------------------------------------------------------------------------------------------------
# planning a preset's run (driver side)
# ----------------------------------------------------------------------------------------------------------
def run_batch(preset_batch: int, accelerator: str, precision: str, force: Optional[int] = None) -> int:
    """The batch a preset runs with here: ``force`` if given; the preset's own for a CPU preset in fp32; else at
    most ``GPU_BATCH`` rows (``BF16_BATCH`` under bf16 autocast, slow on CPUs without bf16 units)."""
    if force:
        return int(force)
    if accelerator == "cpu" and not str(precision).startswith("bf16"):
        return preset_batch
    return min(preset_batch, BF16_BATCH if str(precision).startswith("bf16") else GPU_BATCH)


def run_shape_overrides(cfg: Any, batch: int, run_dir: Path) -> list[str]:
    """The overrides that make a composed preset ``cfg`` a two-step CPU run at ``batch`` writing to ``run_dir``
    (the module docstring's run-shape overrides)."""
    from omegaconf import OmegaConf

    return [
        "trainer.accelerator=cpu", "trainer.devices=1", f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
        f"data.batch_size={batch}", f"data.eval_batch_size={batch}", "global_batch_size=null",  # one micro-batch a step
        "++data.pad_to_max=true", "data.num_workers=0",
        f"eval.num_samples={EVAL_SAMPLES}", f"eval.batch_size={EVAL_SAMPLES}", "eval.nll_batches=0",
        "logger=[]", *(f"callbacks.{k}=null" for k in (OmegaConf.select(cfg, "callbacks") or {})),
        "+callbacks.preset_probe._target_=benchmarks.preset_probe.StepProbe", f"paths.output_dir={run_dir}",
    ]


def plan_run(preset: str, standins: StandIns, run_dir: Path, force_batch: Optional[int] = None,
             extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The worker's spec for ``preset``: stand-in overrides (building the stand-ins), run-shape overrides, the
    preset's batch, precision and shapes, and notes on each stand-in. ``extra`` overrides (the harness's unit
    test only) go last."""
    from omegaconf import OmegaConf

    plan = plan_for(preset)
    base = [f"experiment={preset}", *plan.overrides]
    notes: list[str] = []
    if plan.compare_tokenizer:
        base.append(f"compare.tokenizer={standins.compare_tokenizer(plan.compare_tokenizer)}")
        notes.append(f"compare.tokenizer: the shared {plan.compare_tokenizer} tokenizer (built as "
                     f"experiments/compare/{plan.compare_tokenizer}_cpu.sh step 0)")
    if plan.chain:
        _, ae = standins.chain(plan.chain)
        key = "compare.ld4lg_autoencoder" if plan.compare_tokenizer else "model.autoencoder_path"
        base.append(f"{key}={ae}")
        notes.append(f"{key}: untrained stage-1 run of chain {plan.chain} ({CHAINS[plan.chain].doc})")
    elif plan.compare_tokenizer:
        base.append("compare.ld4lg_autoencoder=null")
    if plan.bart_of:
        bart, _ = standins.chain(plan.bart_of)
        base.append(f"model.bart_path={bart}")
        notes.append(f"model.bart_path: untrained stage-0 export of chain {plan.bart_of} ({CHAINS[plan.bart_of].doc})")
    if plan.diffusion:
        base.append(f"model.diffusion.checkpoint={standins.diffusion_run(plan.diffusion)}")
        notes.append(f"model.diffusion.checkpoint: untrained run of {' '.join(DIFFUSION_RUNS[plan.diffusion])}")
    cfg, overrides, hub_notes = compose_standins([*base, *extra], standins)
    notes += hub_notes
    left = missing_keys(cfg)
    if left:
        raise ValueError(f"{preset}: no value for {', '.join(left)} (add a stand-in to benchmarks/presets.py PLANS)")
    batch = int(cfg.data.batch_size)
    accelerator, precision = str(cfg.trainer.accelerator), str(cfg.trainer.precision)
    b = run_batch(batch, accelerator, precision, force_batch)
    shape_overrides = run_shape_overrides(cfg, b, run_dir)
    return {
        "preset": preset, "overrides": overrides, "run_overrides": shape_overrides, "standins": notes,
        "batch": {"preset": batch, "run": b}, "accelerator": accelerator, "precision": precision,
        "max_len": OmegaConf.select(cfg, "data.max_len"), "max_src_len": OmegaConf.select(cfg, "data.max_src_len"),
        "family": str(cfg.model._target_).rsplit(".", 1)[-1], "extra_overrides": list(extra),
    }


# ----------------------------------------------------------------------------------------------------------
# the worker (one process per preset)
# ----------------------------------------------------------------------------------------------------------
def _network(cfg: Any) -> dict[str, Any]:
    """The resolved network configs of a composed model (what fixes its size)."""
    from omegaconf import OmegaConf

    out = {}
    for key in ("model.network", "model.bart", "model.bart_path"):
        node = OmegaConf.select(cfg, key)
        if node is not None:
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    for key in ("num_latents", "latent_dim", "compress_depth", "reconstruct_depth"):
        if OmegaConf.select(cfg, f"model.{key}") is not None:
            out[f"model.{key}"] = OmegaConf.select(cfg, f"model.{key}")
    return out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Compose the spec's overrides, run ``textdiff.cli.train.train`` with a ``StepProbe`` and return the
    measurements (or the error)."""
    import torch

    from benchmarks.common import process_peak_rss_mb
    from benchmarks.preset_probe import StepProbe

    out: dict[str, Any] = {"status": "error"}
    start = time.perf_counter()
    try:
        from textdiff.cli.train import train

        cfg, _ = compose([*spec["overrides"], *spec["run_overrides"]])
        out["network"] = _network(cfg)
        metrics = train(cfg)
        probe = StepProbe.instances[-1]
        done = time.perf_counter()
        out.update(probe.result())
        out["vocab_size"] = int(cfg.data.vocab_size)
        out["fit_seconds"] = metrics.get("fit_seconds")
        out["global_step"] = metrics.get("global_step")
        out["evaluation"] = {"seconds": round(done - (probe.fit_end or done), 2),
                             **{k: metrics[k] for k in ("num_sequences", "num_examples", "sampling_seconds",
                                                        "sequences_per_second", "sentences_per_second", "bleu",
                                                        "reconstruction_bleu", "accuracy") if k in metrics}}
        # a model with nothing to train (the comparison's reference rows, textdiff/families/reference.py) stops at 0
        steps = 0 if int(metrics.get("trainable_params", 1)) == 0 else STEPS
        if int(metrics.get("global_step", 0)) != steps:
            raise RuntimeError(f"the fit ran {metrics.get('global_step')} optimizer steps, expected {steps}")
        if len(probe.steps) != steps:
            raise RuntimeError(f"the probe saw {len(probe.steps)} steps, expected {steps}")
        out["estimate"] = probe.estimate(int(spec["batch"]["preset"]))
        out["estimate_at_run_batch"] = probe.estimate(int(spec["batch"]["run"]))
        out["status"] = "ok"
    except BaseException as err:  # noqa: BLE001 - recorded for the table; the driver decides
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["peak_rss_mb"] = round(process_peak_rss_mb(), 1)
    out["threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------------------
def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HOME", str(workdir / "hf_home"))
    return env


def busy_processes(window: float = 2.0, threshold: float = 20.0) -> list[dict[str, Any]]:
    """Other processes on the machine that used more than ``threshold`` % of a core over ``window`` seconds
    (read from /proc; [] where it is missing): what shared the CPUs with a measurement."""
    def ticks() -> dict[int, int]:
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                out[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
        return out

    if not Path("/proc/self/stat").exists():
        return []
    first = ticks()
    time.sleep(window)
    second, hz, me = ticks(), os.sysconf("SC_CLK_TCK"), os.getpid()
    busy = []
    for pid, t in second.items():
        share = 100.0 * (t - first.get(pid, t)) / hz / window
        if share > threshold and pid != me:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                cmd = cmd or f"[{Path(f'/proc/{pid}/comm').read_text().strip()}]"  # a kernel thread
            except OSError:
                continue
            busy.append({"pid": pid, "cpu_percent": round(share), "cmd": cmd[:160]})
    return sorted(busy, key=lambda b: -b["cpu_percent"])


def _run(cmd: list[str], log: Path, timeout: int, workdir: Path) -> Optional[int]:
    """Run ``cmd`` in the repository with its output in ``log``; its exit code, None when it timed out."""
    with open(log, "w", encoding="utf-8") as f:
        try:
            return subprocess.run(cmd, cwd=REPO, env=_env(workdir), stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return None


def _tail(log: Path, lines: int = 30) -> str:
    return "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_preset(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Plan ``preset`` in one process (``--plan``: stand-ins built there, so their memory and output stay out of
    the measurement), run it in another (``--worker``), and return its entry for the results."""
    from benchmarks.common import machine

    entry: dict[str, Any] = {"preset": preset, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    reason = not_on_cpu(preset)
    if reason:
        entry.update(status="not_on_cpu", reason=reason)
        return entry
    entry["load_average_1min_before"] = round(os.getloadavg()[0], 2)
    workdir = Path(args.workdir)
    run_dir = workdir / "runs" / preset
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.presets", "--plan", preset, "--spec", str(spec_path),
           "--workdir", str(workdir), *(["--batch", str(args.batch)] if args.batch else []),
           *(f"--override={o}" for o in args.override)]
    code = _run(cmd, run_dir / "plan.log", args.timeout, workdir)
    spec = json.loads(spec_path.read_text(encoding="utf-8")) if spec_path.is_file() else None
    if spec is None or "error" in spec:
        why = spec["error"] if spec else ("timed out" if code is None else f"exited with code {code}")
        entry.update(status="error", stage="stand-ins", error=f"planning failed: {why}",
                     traceback=(spec or {}).get("traceback"), log_tail=_tail(run_dir / "plan.log"),
                     worker_log=_rel(run_dir / "plan.log"))
        return entry
    entry.update({k: spec[k] for k in ("family", "batch", "accelerator", "precision", "max_len", "max_src_len",
                                        "standins", "overrides", "run_overrides", "extra_overrides")})
    entry["other_busy_processes"] = busy_processes()  # what shares the CPUs with the measurement that follows
    log = run_dir / "worker.log"
    code = _run([sys.executable, "-m", "benchmarks.presets", "--worker", str(spec_path), "--result", str(result_path)],
                log, args.timeout, workdir)
    if result_path.is_file():
        entry.update(json.loads(result_path.read_text(encoding="utf-8")))
    else:
        entry.update(status="error", error=(f"timed out after {args.timeout} s" if code is None else
                                            f"worker exited with code {code} and wrote no result"), log_tail=_tail(log))
    entry["worker_log"] = _rel(log)
    entry["machine"] = machine("cpu")
    entry["load_average_1min_after"] = entry["machine"].pop("load_average_1min", None)
    return entry


def source_state() -> dict[str, Any]:
    """The code measured: the git commit of the checkout and the files that differ from it (None outside git)."""
    def git(*a: str) -> Optional[str]:
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    head, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    return {"commit": head.strip() if head else None,
            "uncommitted": [line[3:] for line in status.splitlines()] if status is not None else None}


def _gib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def _params(p: dict[str, int]) -> str:
    if not p:
        return "-"
    total, trainable = p["total"] / 1e6, p["trainable"] / 1e6
    return f"{trainable:.1f}M" if p["total"] == p["trainable"] else f"{trainable:.1f}M / {total:.1f}M"


def table(entries: dict[str, dict[str, Any]]) -> str:
    """Markdown of the results: the run table (one row per preset), the GPU-estimate table (GiB at each preset's
    own batch), and the reasons of presets that failed or were not run."""
    run = ["| preset | parameters | L (S) | precision | batch run / preset | CPU s/step (wall) | peak RSS GiB "
           "| status |", "|" + "---|" * 8]
    gpu = ["| preset | batch | weights | EMA | gradients | optimizer | activations | total GiB |", "|" + "---|" * 8]
    notes = []
    for name in sorted(entries):
        e = entries[name]
        shape = f"{e.get('max_len', '-')}" + (f" ({e['max_src_len']})" if e.get("max_src_len") else "")
        batch = e.get("batch") or {}
        steps = e.get("steps") or []
        secs = f"{steps[-1]['cpu_seconds']:.2f} ({steps[-1]['wall_seconds']:.2f})" if steps else "-"
        precision = {"bf16-mixed": "bf16", "32-true": "fp32"}.get(str(e.get("precision")), e.get("precision", "-"))
        rss = f"{e['peak_rss_mb'] / 1024:.2f}" if e.get("peak_rss_mb") else "-"
        status = {"ok": "ok", "not_on_cpu": "not on CPU"}.get(e.get("status"), "FAILED")
        if status == "not on CPU":
            notes.append(f"- `{name}`: not run on CPU: {e.get('reason')}")
        elif status == "FAILED":
            notes.append(f"- `{name}`: FAILED: {str(e.get('error', '?')).splitlines()[0][:300]}")
        run.append(f"| `{name}` | {_params(e.get('parameters') or {})} | {shape} | {precision} "
                   f"| {batch.get('run', '-')} / {batch.get('preset', '-')} | {secs} | {rss} | {status} |")
        est = e.get("estimate")
        if est:
            parts = " | ".join(_gib(est[k]) if est.get(k) or k != "ema" else "-"
                               for k in ("weights", "ema", "gradients", "optimizer", "activations"))
            gpu.append(f"| `{name}` | {est['batch']} | {parts} | **{_gib(est['total'])}** |")
    return "\n".join(run) + "\n\n" + "\n".join(gpu) + ("\n\n" + "\n".join(notes) if notes else "")


def write_readme(path: Path, text: str) -> bool:
    """Replace the table between ``TABLE_BEGIN`` and ``TABLE_END`` in ``path``; False when the markers are missing."""
    doc = path.read_text(encoding="utf-8")
    if TABLE_BEGIN not in doc or TABLE_END not in doc:
        return False
    head, rest = doc.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    path.write_text(f"{head}{TABLE_BEGIN}\n{text}\n{TABLE_END}{tail}", encoding="utf-8")
    return True


METHOD = {
    "runs": "textdiff.cli.train.train (textdiff-train's function) on the composed preset with the stand-in "
            "overrides and the run overrides listed per entry: 2 optimizer steps on CPU, no validation, loggers or "
            "checkpoints; every batch padded to the preset's max_len (and max_src_len); then the evaluation's "
            "generate call on 2 samples/sources (evaluate_on for autoencoders and classifiers), no NLL bound.",
    "seconds_per_step": "the second (measured) optimizer step: process CPU seconds (time.process_time) and wall "
                        "seconds from on_train_batch_start to on_train_batch_end after every callback (EMA "
                        "included); data loading excluded; one intra-op thread unless OMP_NUM_THREADS says otherwise.",
    "peak_rss_mb": "ru_maxrss of the worker process (composition, data, model, 2 steps, the generate call).",
    "estimate": "bytes a GPU would hold for one training step at the preset's own batch: weights (parameters and "
                "buffers, frozen ones included) + the EMA copy + gradients + optimizer state, each measured on the "
                "live objects after the measured step, + activations: bytes of the distinct storages autograd saves "
                "for backward in the step's forward (torch.autograd.graph.saved_tensors_hooks; parameter storages "
                "left out, autocast's bf16 weight copies counted), measured at the run's batch b and at b // 2 rows "
                "and extrapolated linearly (fixed + per_row x batch). Not included: the CUDA context and kernels "
                "(~0.3-1 GiB), allocator fragmentation, transient buffers of forward and backward, and evaluation.",
}


def main(argv: Optional[list[str]] = None) -> int:
    """The command line (see the module docstring); returns 0, or 1 when a preset that is not marked
    'not on CPU' failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated shell patterns of preset names (default: every preset)")
    ap.add_argument("--out", default=str(RESULT), help="results JSON; entries of presets not run are kept")
    ap.add_argument("--readme", help="a Markdown file whose table between the test-presets markers is rewritten")
    ap.add_argument("--workdir", default=str(WORKDIR), help="stand-ins, run directories and worker logs")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per preset")
    ap.add_argument("--batch", type=int, help="run every preset at this batch (default: see run_batch)")
    ap.add_argument("--override", action="append", default=[],
                    help="for the harness's unit test only: a Hydra override added to every preset (e.g. a smaller "
                         "network); the results then do not measure the preset, and --out must be given")
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.plan:  # a subprocess of run_preset: build the stand-ins, write the worker's spec (or the error)
        workdir = Path(args.workdir)
        run_dir = workdir / "runs" / args.plan
        try:
            from textdiff.data.paths import shared_data_dir

            spec = plan_run(args.plan, StandIns(workdir / "standins", shared_data_dir()), run_dir, args.batch,
                            tuple(args.override))
        except Exception as err:  # noqa: BLE001 - reported in the preset's entry
            spec = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        Path(args.spec).write_text(json.dumps(spec, indent=1, default=str), encoding="utf-8")
        return 0 if "error" not in spec else 1
    if args.worker:
        result = worker(json.loads(Path(args.worker).read_text(encoding="utf-8")))
        Path(args.result).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        return 0 if result["status"] == "ok" else 1
    if args.override and Path(args.out).resolve() == RESULT.resolve():
        ap.error("--override changes the presets: give another --out than the results file")
    presets = select(args.only)
    from benchmarks.common import machine

    workdir = Path(args.workdir)
    out = Path(args.out)
    doc = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    entries: dict[str, Any] = doc.get("presets", {})
    entries = {k: v for k, v in entries.items() if k in experiments()}  # presets since removed leave the table
    source = source_state()
    command = "python -m benchmarks.presets " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"test-presets: {len(presets)} preset(s), {STEPS} optimizer steps each; work directory {workdir}", flush=True)
    for i, preset in enumerate(presets, 1):
        print(f"[{i}/{len(presets)}] {preset} ...", end=" ", flush=True)
        entry = run_preset(preset, args)
        entry.update(command=command, source=source)  # an entry keeps its provenance when later runs merge in
        entries[preset] = entry
        step = (entry.get("steps") or [{}])[-1]
        est = (entry.get("estimate") or {}).get("total")
        print(f"{entry['status']}" + (f": {entry.get('error')}" if entry["status"] == "error" else "")
              + (f" | {str(step['cpu_seconds']) + ' CPU s/step' if step else 'no optimizer step'} at "
                 f"batch {entry['batch']['run']}, peak RSS "
                 f"{entry['peak_rss_mb'] / 1024:.2f} GiB, GPU estimate {_gib(est)} GiB" if entry["status"] == "ok"
                 else ""), flush=True)
        doc = {"benchmark": "presets_cpu", "last_invocation": {"command": command, "machine": machine("cpu"),
                                                               "source": source, "presets": presets},
               "method": METHOD, "steps": STEPS, "presets": dict(sorted(entries.items()))}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")  # after each preset
    text = table(entries)
    print(text)
    if args.readme and not write_readme(Path(args.readme), text):
        print(f"{args.readme} has no {TABLE_BEGIN} / {TABLE_END} markers: table not written there", file=sys.stderr)
        return 1
    failed = [p for p in presets if entries[p]["status"] not in ("ok", "not_on_cpu")]
    if failed:
        print(f"test-presets: FAILED: {', '.join(failed)} (worker logs under {workdir / 'runs'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
