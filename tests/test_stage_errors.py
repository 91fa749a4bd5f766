"""A stage with a bad setting or a missing upstream output stops with a message that names it and
says what to run or set, before it writes anything (the jobs' own error paths, on an empty lake)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from rgalign_core.stage import StageError

DS = "2026-12-01"
CASES = [
    ("simulate_logs", {"sim.scale": "huge"}, r"sim.scale='huge' is not one of \['large', 'medium', 'small'"),
    ("publish", {"publish.active_days": 0}, r"publish.active_days=0: must be 1..3 \(windows.test_days\)"),
    ("reward_select", {}, rf"no reward model: .*models/qe_rec/ds={DS} is missing or incomplete; run train_qe_rec for {DS} first"),
    ("encode_queries", {"reasoner.base_model": "/nonexistent/qwen"},
     r"reasoner.base_model='/nonexistent/qwen': no config.json there; give a local Hugging Face checkpoint directory"),
    ("rg_dpo", {}, rf"no sft reasoner at .*models/reasoner_sft/ds={DS}: run rg_sft for {DS} first"),
]


@pytest.mark.parametrize("job, sets, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_setting_or_a_missing_input_stops_the_job_with_a_message_that_says_what_to_do(job, sets, message, overrides, tmp_path):
    module = importlib.import_module(f"jobs.{job}")
    with pytest.raises(StageError, match=message):
        module.main(["--ds", DS, *overrides(**sets)])
    lake = Path(tmp_path, "lake")
    written = [p for p in lake.rglob("*") if p.is_file()] if lake.exists() else []
    assert written == []
