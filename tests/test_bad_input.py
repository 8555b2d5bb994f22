"""Bad inputs each get a clear error that names the offending key / file / line / family, and leave no
partial output (issue 7, "Faults and bad input"): one test per case, through the entry point where the
case is about it (``textdiff-train`` / ``textdiff-sample`` in a subprocess) and the Python API elsewhere."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from textdiff.cli.common import CONF_DIR, ConfigError, build, build_datamodule, register_resolvers
from textdiff.cli.runs import load_run
from textdiff.data import DataError, read_jsonl, read_lines, read_parallel

REPO = Path(__file__).resolve().parents[1]
register_resolvers()


def _run(entry, args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    code = f"import sys; from textdiff.cli.{entry} import main; sys.argv[0]='{entry}'; main()"
    cmd = [sys.executable, "-c", code, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _run_outputs(run_dir):
    """What a successful run leaves (Hydra's own .hydra/ and train.log do not count; tokenizer/ is checked
    separately where the failure comes before it is written)."""
    names = ("config.yaml", "checkpoints", "csv", "tensorboard", "metrics*.json", "samples*.jsonl")
    return sorted(str(p.relative_to(run_dir)) for n in names for p in Path(run_dir).glob(n))


def _assert_clean_exit(code, out):
    assert code != 0 and "Traceback" not in out, out[-3000:]


# 1. unknown config key --------------------------------------------------------------------------------
def test_unknown_config_key_is_named_and_nothing_is_written(tmp_path):
    run_dir = tmp_path / "run"
    code, out = _run("train", ["data=toy", "+model.network.widht=3", f"hydra.run.dir={run_dir}"])
    _assert_clean_exit(code, out)
    assert "unknown key `model.network.widht`" in out and "TransformerDenoiser takes no argument 'widht'" in out
    assert "dim, depth" in out  # the keys it does take
    assert _run_outputs(run_dir) == []


def test_a_renamed_key_on_the_command_line_names_its_new_name(tmp_path):
    run_dir = tmp_path / "run"  # model.denoiser / model.backbone: every family's network is model.network now
    code, out = _run("train", ["data=toy", "model.denoiser.dim=32", f"hydra.run.dir={run_dir}"])
    _assert_clean_exit(code, out)
    assert "`model.denoiser` is now `model.network`" in out and "write model.network.dim=32" in out
    assert _run_outputs(run_dir) == []


# 2. missing _target_ ----------------------------------------------------------------------------------
def test_missing_target_is_named_before_training_starts(tmp_path):
    run_dir = tmp_path / "run"  # before: training started with a DictConfig as the network, then crashed
    code, out = _run("train", ["data=toy", "~model.network._target_", f"hydra.run.dir={run_dir}"])
    _assert_clean_exit(code, out)
    assert "`model.network` has no `_target_`" in out and "TransformerDenoiser" in out
    assert _run_outputs(run_dir) == []
    with pytest.raises(ConfigError, match=r"`model` has no `_target_`"):  # the group's own node
        build(_compose(["data=toy", "~model._target_"]), "model")
    with pytest.raises(ConfigError, match=r"`model\.optimizer` has no `_target_`"):  # _partial_ left alone
        build(_compose(["data=toy", "~model.optimizer._target_", "data.vocab_size=50"]), "model")


# 3. incompatible components ---------------------------------------------------------------------------
TINY_BERT = "model.network.bert={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}"


def test_incompatible_components_fail_at_build_naming_the_keys(tmp_path):
    # an absorbing model with the Gaussian DDPM sampler: before, a raw ValueError at the first validation
    cfg = _compose(["data=toy", "model=diffusion_bert", "sampler=ddpm", "schedule=mutual",
                    "+data.tokenizer.add_mask_token=true", TINY_BERT])
    build_datamodule(cfg, None)
    with pytest.raises(ConfigError, match=r"sampler `model\.sampler` does not fit the AbsorbingProcess of "
                                          r"`model\.process`.*variance applies to Gaussian processes only"):
        build(cfg, "model")
    # a conditional model on unconditional data
    cfg = _compose(["data=toy", "model=difformer"])
    build_datamodule(cfg, None)
    with pytest.raises(ConfigError, match=r"'data\.max_src_len' not found; the chosen config groups do not fit"):
        build(cfg, "model")


# 4. empty corpus ----------------------------------------------------------------------------------------
def test_empty_corpus_names_the_file_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    run_dir = tmp_path / "run"
    code, out = _run("train", ["data=toy", f"data.train_path={empty}", f"hydra.run.dir={run_dir}"])
    _assert_clean_exit(code, out)  # before: a DataError traceback through Hydra
    assert f"{empty}: file is empty (no non-blank lines)" in out
    assert _run_outputs(run_dir) == [] and not (run_dir / "tokenizer").exists()


# 5. misaligned parallel files ---------------------------------------------------------------------------
def test_misaligned_parallel_files_name_both_files_and_the_line(tmp_path):
    for split, n_en in (("train", 3), ("valid", 2)):
        (tmp_path / f"{split}.de").write_text("ein Hund\nzwei Katzen\ndrei Vögel\n", encoding="utf-8")
        (tmp_path / f"{split}.en").write_text("".join(["a dog\n", "two cats\n", "three birds\n"][:n_en]),
                                              encoding="utf-8")
    de, en = tmp_path / "valid.de", tmp_path / "valid.en"
    with pytest.raises(DataError) as err:
        read_parallel(de, en)
    assert str(err.value) == (f"parallel files differ in length: {de} has 3 lines but {en} has 2 lines "
                              f"({de} line 3 has no partner in {en})")
    # a run reads every split before it writes anything: the bad valid split stops it at start
    cfg = _compose(["data=multi30k", f"data.train_path={tmp_path / 'train'}",
                    f"data.valid_path={tmp_path / 'valid'}", f"data.test_path={tmp_path / 'train'}"])
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"valid\.de line 3 has no partner") as err:
        build_datamodule(cfg, run_dir)
    assert isinstance(err.value, DataError) and not run_dir.exists()


# 6. undecodable bytes ---------------------------------------------------------------------------------
def test_undecodable_bytes_name_the_file_line_and_byte_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b c\nd e f\ng h \xff\xfe i\n")
    expected = (f"{bad}:3: line 3 is not valid UTF-8 (invalid start byte: byte 0xff at byte 4 of the line, "
                "byte offset 16 in the file)")
    with pytest.raises(DataError) as err:
        read_lines(bad)
    assert str(err.value) == expected
    js = tmp_path / "bad.jsonl"
    js.write_bytes(b'{"ref": "ok"}\n{"ref": "\xc3("}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: line 2 is not valid UTF-8 \(invalid continuation byte: "
                                        r"byte 0xc3 at byte 9 of the line, byte offset 23 in the file\)"):
        read_jsonl(js, "ref")
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="byte offset 16"):
        build_datamodule(_compose(["data=toy", f"data.train_path={bad}"]), run_dir)
    assert not run_dir.exists()


# 7. a checkpoint from another family ------------------------------------------------------------------
def _run_dir_with(tmp_path, family):
    """A run directory as textdiff-train leaves it (resolved config.yaml of a DiffusionLM on the toy data,
    tokenizer/) whose last.ckpt carries another family's tag, as ``TextModule.on_save_checkpoint`` writes it."""
    run_dir = tmp_path / "run"
    cfg = _compose(["data=toy", f"paths.output_dir={run_dir}"])
    build_datamodule(cfg, run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (run_dir / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "textdiff": {"family": family, "module": "textdiff.families"}},
               run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def test_checkpoint_from_another_family_names_both_families(tmp_path):
    run_dir = _run_dir_with(tmp_path, "DiffusionBERT")
    ckpt, cfg_path = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    expected = (f"checkpoint {ckpt} holds a DiffusionBERT model but {cfg_path} builds a DiffusionLM "
                "(model._target_=textdiff.families.DiffusionLM)")
    with pytest.raises(ConfigError) as err:
        load_run(run_dir, "last")
    assert expected in str(err.value)
    code, out = _run("sample", [f"run_dir={run_dir}", "ckpt=last", "num_samples=2"])
    _assert_clean_exit(code, out)  # before: a ValueError traceback from load_weights
    assert f"textdiff-sample: {expected}" in out
    assert not list(run_dir.glob("samples*.jsonl")) and not list(run_dir.glob("metrics*.json"))


# 8. a run directory without a config ------------------------------------------------------------------
def test_run_dir_without_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"has no config\.yaml: is it a textdiff-train run directory"):
        load_run(run_dir, "last")
    code, out = _run("sample", [f"run_dir={run_dir}", "num_samples=2"])
    _assert_clean_exit(code, out)
    assert f"textdiff-sample: {run_dir} has no config.yaml: is it a textdiff-train run directory?" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]


# 9. a derived count whose source is not an integer -----------------------------------------------------
def test_derived_count_names_its_key_when_its_source_is_not_an_integer():
    """``compare.warmup_steps`` is ``${td.div:${compare.steps},5}``: a non-integer source names the derived key."""
    cfg = _compose(["ablation=compare_tatoeba_cpu", "compare.steps=many", "compare.judge=/judge"])
    named = r"td.div takes two integers, got 'many' and 5(.|\n)*full_key: compare.warmup_steps"
    with pytest.raises(Exception, match=named):
        OmegaConf.to_container(cfg.compare, resolve=True)
    assert OmegaConf.create({"n": 12, "k": "${td.div:${n},5}"}).k == 2
