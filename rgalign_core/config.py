"""Stage configs: ``conf/pipeline.yaml`` (shared) merged with ``conf/<stage>.yaml`` (and the
files of the stages it ``uses:``), then overrides.

Precedence, lowest first: pipeline.yaml < <stage>.yaml < environment (RGALIGN_LAKE_ROOT,
RGALIGN_RAW_ROOT, RGALIGN_SPARK_MASTER, MLFLOW_TRACKING_URI,
RGALIGN_MLFLOW_ARTIFACT_ROOT) < ``--set a.b=value`` on the
command line. Values given with ``--set`` are parsed as YAML, so ``--set sim.users=500`` is an int.
A ``--set`` key that no file in ``conf/`` has is still set, with a warning that names the nearest
keys: a typo (``rg_cl.train.step``) would otherwise be ignored without a word.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"

ENV_OVERRIDES = {
    "RGALIGN_LAKE_ROOT": "lake.root",
    "RGALIGN_RAW_ROOT": "lake.raw_root",
    "RGALIGN_SPARK_MASTER": "spark.master",
    "MLFLOW_TRACKING_URI": "mlflow.tracking_uri",
    "RGALIGN_MLFLOW_ARTIFACT_ROOT": "mlflow.artifact_root",
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


log = logging.getLogger("rgalign.config")


@functools.lru_cache(maxsize=4)
def known_keys(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every dotted key (sections too) of every stage file in ``conf_dir``: what a ``--set`` may
    name. The DAG passes one list of overrides to every job, so a key of another stage is known."""
    keys: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            keys.add(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    for f in sorted(Path(conf_dir).glob("*.yaml")):
        walk({k: v for k, v in (yaml.safe_load(f.read_text()) or {}).items() if k != "uses"}, "")
    return frozenset(keys)


def warn_unknown(dotted: str, conf_dir: Path = CONF_DIR) -> bool:
    """Log a warning (with the nearest known keys) when no config file has ``dotted``; True if so."""
    keys = known_keys(Path(conf_dir))
    if dotted in keys:
        return False
    near = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    log.warning("--set %s: no file in %s has this key, so only code that reads it as optional sees it%s",
                dotted, conf_dir, f"; did you mean {' or '.join(near)}?" if near else "")
    return True


def set_path(cfg: dict, dotted: str, value) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {p!r} is not a section")
    node[leaf] = value


def parse_set(items: list[str]) -> list[tuple[str, object]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v) if v != "" else "")) 
    return out


def _resolve_paths(cfg: dict) -> None:
    """Relative local paths in the lake/mlflow sections are relative to the project root."""

    def local(p: str) -> str:
        if "://" in p or os.path.isabs(p):
            return p
        return str((PROJECT_ROOT / p).resolve())

    lake = cfg.get("lake", {})
    for key in ("root", "raw_root"):
        if lake.get(key):
            lake[key] = local(lake[key])
    ml = cfg.get("mlflow", {})
    if ml.get("artifact_root"):
        ml["artifact_root"] = local(ml["artifact_root"])
    uri = ml.get("tracking_uri", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        ml["tracking_uri"] = "sqlite:///" + local(uri[len("sqlite:///"):])


def load(stage: str, overrides: list[str] | None = None, conf_dir: Path | None = None) -> dict:
    conf_dir = Path(conf_dir or CONF_DIR)
    with open(conf_dir / "pipeline.yaml") as f:
        cfg = yaml.safe_load(f) or {}
    stage_file = conf_dir / f"{stage}.yaml"
    if stage_file.exists():
        with open(stage_file) as f:
            own = yaml.safe_load(f) or {}
        # `uses: [other_stage, other_stage.key, other_stage.key.sub, ...]`: a stage that runs another
        # stage's step (the alignment stages re-encode queries) reads that stage's file too, below its
        # own; with `.key` only that block, so a reviewer sees no settings in the run's params that the
        # stage ignores
        for other in own.pop("uses", None) or []:
            name, _, key = other.partition(".")
            with open(conf_dir / f"{name}.yaml") as f:
                theirs = yaml.safe_load(f) or {}
            theirs.pop("uses", None)
            if key:
                path = key.split(".")
                block = theirs
                for part in path:
                    block = block[part]
                for part in reversed(path):
                    block = {part: block}
                theirs = block
            cfg = _merge(cfg, theirs)
        cfg = _merge(cfg, own)
    for env, dotted in ENV_OVERRIDES.items():
        if os.environ.get(env):
            set_path(cfg, dotted, os.environ[env])
    for k, v in parse_set(overrides or []):
        warn_unknown(k, conf_dir)
        set_path(cfg, k, v)
    _resolve_paths(cfg)
    cfg["stage"] = stage
    return cfg


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able object (configs, to tell a stale output)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat(cfg: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for logging params."""
    out: dict[str, object] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out
