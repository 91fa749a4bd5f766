"""Config loading and the messages a user sees when a key, a partition or a file is wrong."""
from __future__ import annotations

import logging

import pytest

from rgalign_core import config, stage
from rgalign_core.lake import Lake, MissingPartition


def test_a_set_key_no_config_file_has_is_set_with_a_warning_naming_the_nearest(caplog):
    with caplog.at_level(logging.WARNING, logger="rgalign.config"):
        cfg = config.load("rg_cl", ["rg_cl.train.step=3", "rg_cl.train.steps=7", "ranker.epochs=2"])
    assert cfg["rg_cl"]["train"]["step"] == 3 and cfg["rg_cl"]["train"]["steps"] == 7
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "rg_cl.train.step:" in warned[0] and "did you mean rg_cl.train.steps" in warned[0]


def test_a_key_of_another_stage_is_known(caplog):
    # the DAG passes one override list to every job: bootstrap's own key must not warn in rg_sft
    with caplog.at_level(logging.WARNING, logger="rgalign.config"):
        config.load("rg_sft", ["train.steps=5", "sim.users=100", "rg_cl.tau=0.1"])
    assert not caplog.records


def test_a_missing_partition_names_the_task_that_writes_it(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    cases = {("queries", "dpo"): "rg_dpo", ("models", "qe_rec_cl"): "rg_cl", ("models", "two_tower"): "train_baseline",
             ("features", "samples"): "extract_features", ("queries", "cal2"): "calibrate", ("raw", "orders"): "simulate_logs"}
    for (area, table), maker in cases.items():
        with pytest.raises(MissingPartition, match=f"written by {maker}"):
            lake.require(lake.partition(area, table, "2026-12-01"), "x")
    with pytest.raises(MissingPartition, match="Run the upstream task"):
        lake.require(lake.partition("queries", "oracle", "2026-12-01"), "x")  # a bench's own table


def test_help_names_only_config_files_that_exist():
    assert "conf/rg_cl.yaml" in stage.config_help("rg_cl")
    assert "conf/pipeline.yaml;" in stage.config_help("train_baseline")  # the rankers read pipeline.yaml's ranker:
    assert "train_baseline.yaml" not in stage.config_help("train_baseline")
