"""The shared DeepSpeed loop, launched for real by the deepspeed launcher on CPU (gloo)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rgalign_core import ds_trainer
from rgalign_core.config import PROJECT_ROOT
from rgalign_core.reasoner import build_tiny, train_tokenizer

ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=128)
STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    tok = train_tokenizer(["where is my parcel", "my payment failed", "refund status please"] * 10, 280)
    build_tiny(tok, ARCH, seed=0).save_pretrained(root / "init")
    rng = np.random.default_rng(0)
    # learnable rows: each token is the previous one + 1 (mod vocab), from a random start
    starts = rng.integers(0, len(tok), (64, 1))
    np.save(root / "blocks.npy", ((starts + np.arange(32)) % len(tok)).astype(np.int32))
    return root


def spec(root: Path, name: str, **kw) -> dict:
    return {"name": name, "objective": "causal_lm", "model_dir": str(root / "init"), "data": str(root / "blocks.npy"),
            "ds_config": str(PROJECT_ROOT / "conf/deepspeed/zero0.json"), "global_batch": 8, "train_steps": STEPS,
            "lr": 1e-2, "warmup_steps": 0, "seed": 3, "log_every": 1, "checkpoint_dir": str(root / name / "ckpt"),
            "out_dir": str(root / name / "model"), **kw}


@pytest.fixture(scope="module")
def one_proc(setup):
    return ds_trainer.launch(spec(setup, "p1", save_every=2), 1, setup / "p1" / "run")


def _losses(history):
    return {h["step"]: h["loss"] for h in history}


def test_two_processes_match_one_on_the_same_global_batch(setup, one_proc):
    two = ds_trainer.launch(spec(setup, "p2"), 2, setup / "p2" / "run")
    a, b = _losses(one_proc), _losses(two)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=2e-4)
    assert a[STEPS] < a[1]  # it learns


def test_runs_leave_no_shared_memory_behind(setup, monkeypatch):
    seen = {}
    real_remove = ds_trainer.remove_shm_buffers

    def remove(port):
        seen["port"], seen["during"] = port, ds_trainer.shm_buffers(port)
        real_remove(port)

    monkeypatch.setattr(ds_trainer, "remove_shm_buffers", remove)
    ds_trainer.launch(spec(setup, "shm", train_steps=1), 2, setup / "shm" / "run")
    assert len(seen["during"]) == 2  # DeepSpeed's CPU all-reduce made one segment per rank...
    assert ds_trainer.shm_buffers(seen["port"]) == []  # ...and none is left in /dev/shm (RAM)


def test_every_trainable_parameter_changes(setup, one_proc):
    before = load_file(setup / "init" / "model.safetensors")
    after = load_file(setup / "p1" / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_resume_reproduces_the_next_steps(setup, one_proc):
    ds_trainer.launch(spec(setup, "r", stop_after=2), 1, setup / "r" / "run1")
    assert not (setup / "r" / "model").exists()  # interrupted: no final model
    resumed = ds_trainer.launch(spec(setup, "r", resume=True), 1, setup / "r" / "run2")
    full = _losses(one_proc)
    got = _losses(resumed)
    assert min(got) == 3  # continued from the saved step
    np.testing.assert_allclose([got[3], got[4]], [full[3], full[4]], rtol=1e-5)


def test_batch_problems_are_raised_before_launching_and_name_the_key(setup, tmp_path):
    with pytest.raises(ValueError, match=r"rg_sft\.train\.global_batch=9 is not divisible by rg_sft\.train\.nproc=2"):
        ds_trainer.launch(spec(setup, "odd", global_batch=9, config_section="rg_sft.train"), 2, tmp_path / "run")
    with pytest.raises(ValueError, match=r"64 training rows is fewer than one global batch \(train\.global_batch=128\)"):
        ds_trainer.launch(spec(setup, "big", global_batch=128), 1, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was launched


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case: no bf16, no fp16")
def test_auto_precision_becomes_a_bool_deepspeed_keeps(setup, tmp_path):
    # DeepSpeed drops "auto" values, so they are decided here; on a CPU both are off
    path = tmp_path / "auto.json"
    path.write_text('{"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "gradient_accumulation_steps": 2}')
    cfg = ds_trainer.ds_config({**spec(setup, "auto"), "ds_config": str(path)}, 2)
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["train_batch_size"]) == (2, 8)  # 8 = 2 ranks x 2 accum x 2
