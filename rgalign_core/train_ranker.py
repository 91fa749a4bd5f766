"""The one training loop for every ranker (two-tower baseline, QE-Rec), and its job body.

Tensors are sliced by session index (no per-row Dataset); each epoch shuffles sessions with a
seeded generator; the loss is listwise softmax over a session's shown intents on the click
(sessions without a click skip it) plus a pointwise BCE term, so scores can be calibrated to CTR;
training uses an additive position bias that inference leaves out. Early stopping keeps the
epoch with the best validation GAUC; with ``lr_decay`` < 1, each ``lr_plateau`` epochs in a row
without a better validation GAUC multiply the learning rate by it first (FuxiCTR's
reduce-LR-on-plateau). With ``refit`` on, each seed is then trained again from the same
initialisation on the train and validation windows for the epoch count early stopping kept, so the
model that is tested, scored and published has also seen the freshest days (where the newest intents
first appear). The first pass is kept as ``seed=<k>/held_out/``: stages that judge on the validation
window (calibrate's loop GAUC, RG-CL's frozen QE-Rec) read it through
``held_out_path``, so what they measure there stays out of sample. Deterministic on CPU for a seed.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from rgalign_core import metrics

log = logging.getLogger("rgalign.train_ranker")
HELD_OUT = "held_out"  # the subdirectory of a refit seed holding its first pass


def held_out_path(seed_dir: str | Path) -> str:
    """The seed's model that has not trained on the validation window: its first pass when it was
    refit (``<seed_dir>/held_out``), else the model itself."""
    first = Path(seed_dir) / HELD_OUT
    return str(first if (first / "model.safetensors").exists() else seed_dir)


def schema_of(data, model_cfg: dict | None = None) -> dict:
    """The input widths a ranker is built from, saved in its config.json so loading needs nothing else
    (with ``title_encoder`` on, the encoder's width too: a serving host needs no encoder)."""
    from rgalign_core.ranking_data import CATEGORICAL, NUMERIC

    v = data.vocab
    schema = {"cardinalities": [len(x) for x in CATEGORICAL.values()], "n_numeric": len(NUMERIC),
              "n_intents": len(v.intent_ids), "n_categories": len(v.categories), "n_words": len(v.title_words),
              "query_dim": data.query_dim}
    if (model_cfg or {}).get("title_encoder"):
        from rgalign_core.text_encoder import hidden_size

        schema["title_dim"] = hidden_size(model_cfg["title_encoder"])
    return schema


def build(name: str, schema: dict, cfg: dict, seed: int):
    import torch

    from rgalign_core.models import MODELS

    torch.manual_seed(seed)
    model = MODELS[name](schema, cfg)
    if name == "qe_rec" and cfg.get("start_from_baseline"):
        model.start_as(build("two_tower", schema, cfg, seed))  # the two-tower of the same seed
    return model


def loss_fn(logits, b, listwise_weight: float, bce_weight: float):
    import torch
    import torch.nn.functional as F

    mask, y = b["mask"], b["clicked"]
    masked = logits.masked_fill(~mask, -1e9)
    has_click = y.sum(1) > 0
    loss = logits.new_zeros(())
    if has_click.any():
        target = y[has_click] / y[has_click].sum(1, keepdim=True)
        loss = loss + listwise_weight * -(target * torch.log_softmax(masked[has_click], 1)).sum(1).mean()
    bce = F.binary_cross_entropy_with_logits(logits[mask], y[mask])
    return loss + bce_weight * bce


def predict(model, data, idx: np.ndarray, batch_sessions: int = 1024) -> np.ndarray:
    """Logits [len(idx), K] without the position bias."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for a in range(0, len(idx), batch_sessions):
            out.append(model(data.batch(idx[a:a + batch_sessions])).numpy())
    return np.concatenate(out) if out else np.zeros((0, data.tensors["mask"].shape[1]), np.float32)


def evaluate(model, data, idx: np.ndarray, k: int = 3) -> dict:
    logits = predict(model, data, idx)
    f = data.flat(idx, logits)
    return metrics.ranking_report(f["user_id"], f["session_id"], f["clicked"], f["score"],
                                  probs=1 / (1 + np.exp(-f["score"])), k=k)


def fit(model, data, train_idx: np.ndarray, valid_idx: np.ndarray, cfg: dict, seed: int, log_metric=None,
        fixed_epochs: int | None = None):
    """Train with early stopping on validation GAUC; returns (best model, per-epoch history).
    ``fixed_epochs``: train exactly that many epochs and keep the last (a refit whose training set
    holds the validation window: nothing is left to stop on, so ``valid_idx`` is not scored)."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    shown = data.tensors["mask"][train_idx]
    model.intent.mark_seen(data.tensors["intent"][train_idx][shown], data.tensors["intent_title"][train_idx][shown])
    if model.intent.title_encoder:
        from rgalign_core.text_encoder import shared

        model.intent.read_titles(shared(model.intent.title_encoder).encode(data.vocab.intent_titles))
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 0.0)))
    B = int(cfg["batch_sessions"])
    decay, plateau = float(cfg.get("lr_decay", 1.0)), int(cfg.get("lr_plateau", 0))
    best, best_state, bad, history = -1.0, None, 0, []
    for epoch in range(1, int(fixed_epochs or cfg["epochs"]) + 1):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        t0, total, n_imp = time.time(), 0.0, 0
        for a in tqdm(range(0, len(perm), B), desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=2):
            b = data.batch(perm[a:a + B])
            loss = loss_fn(model(b, with_position=True), b, float(cfg["listwise_weight"]), float(cfg["bce_weight"]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b["mask"])
            n_imp += int(b["mask"].sum())
        seconds = time.time() - t0
        row = {"epoch": epoch, "train_loss": total / len(perm),
               "samples_per_s": n_imp / max(seconds, 1e-9), "epoch_s": seconds, "lr": opt.param_groups[0]["lr"]}
        if fixed_epochs:
            log.info("refit epoch %d/%d: loss %.4f (%.0f samples/s)", epoch, fixed_epochs, row["train_loss"], row["samples_per_s"])
        else:
            valid = evaluate(model, data, valid_idx)
            row.update({"valid_gauc": valid["gauc"], "valid_auc": valid["auc"], "valid_recall_at_3": valid["recall_at_3"],
                        "valid_logloss": valid["logloss"]})
            log.info("epoch %d: loss %.4f valid GAUC %.4f recall@3 %.4f (%.0f samples/s)", epoch, row["train_loss"],
                     row["valid_gauc"], row["valid_recall_at_3"], row["samples_per_s"])
        history.append(row)
        if log_metric:
            log_metric(row, epoch)
        if fixed_epochs:
            continue
        if valid["gauc"] > best + 1e-5:
            best, bad = valid["gauc"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= int(cfg["patience"]):
                break
            if decay < 1.0 and plateau and bad % plateau == 0:
                for group in opt.param_groups:
                    group["lr"] *= decay
    if not fixed_epochs:
        model.load_state_dict(best_state)
    return model, history


def save(model, path: Path, name: str, schema: dict, cfg: dict, vocab, extra: dict) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model": name, "schema": schema, "model_cfg": cfg, "vocab": vocab.to_dict(), **extra}, indent=2))


def load_model(path: str | Path):
    """A saved ranker, frozen, with its vocabulary (for reward_select, evaluate and serving)."""
    from safetensors.torch import load_file

    from rgalign_core.ranking_data import Vocab

    conf = json.loads((Path(path) / "config.json").read_text())
    model = build(conf["model"], conf["schema"], conf["model_cfg"], seed=0)
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, Vocab(**conf["vocab"]), conf


# ---- the job body shared by train_baseline and train_qe_rec ----------------------------------------

def run_job(ctx, model_name: str, query_variant: str | None, out_name: str | None = None, init_from: str | None = None,
            overrides: dict | None = None, log_prefix: str = "") -> dict:
    """Train ``cfg.ranker.seeds`` seeds, save each (safetensors + config) and its test predictions
    to ``models/<out_name or model_name>/ds=<ds>/``. ``init_from``: a models partition whose
    ``seed=<k>/`` weights start seed k (fine-tuning, as the calibration loop does); ``overrides``
    replace ranker settings (epochs, lr...) for this call and are logged as ``<log_prefix>ranker.*``
    params; ``log_prefix`` goes before every metric and artifact it logs (a stage that trains
    several rankers in one run keeps them apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa

    from rgalign_core import ranking_data
    from rgalign_core.config import fingerprint

    import torch

    cfg, lake = ctx.cfg, ctx.lake
    rcfg = {**cfg["ranker"], **(overrides or {})}
    torch.set_num_threads(int(rcfg.get("threads") or 1))
    w = ctx.windows()
    days = w["samples"]
    inputs = [lake.partition("features", "samples", d) for d in days]
    if query_variant:
        inputs += [lake.partition("queries", query_variant, d) for d in days]
    for p in inputs:
        lake.require(p, f"{ctx.stage} input")
    kb_path = lake.partition("validated", "kb_intents", ctx.ds)
    if init_from:
        lake.require(init_from, f"{ctx.stage} initial ranker")
        inputs.append(init_from)
    fp = fingerprint({"model": model_name, "query_variant": query_variant, "ranker": rcfg, "inputs": [lake.marker(p).get("fingerprint") for p in inputs],
                      "kb": lake.marker(kb_path).get("fingerprint")})
    out = lake.partition("models", out_name or model_name, ctx.ds, key="ds")
    if ctx.up_to_date([out], fp):
        log.info("%s for %s is up to date; use --force to retrain", out_name or model_name, ctx.ds)
        return {"skipped": 1}

    kb = lake.read_partition(kb_path, "validated.kb_intents").to_pylist()
    data = ranking_data.load(lake, days, kb, query_variant=query_variant)
    tr, va, te = data.index(w["train"]), data.index(w["valid"]), data.index(w["test"])
    schema = schema_of(data, rcfg["model"])
    ctx.tracker.params({f"{log_prefix}sessions.train": len(tr), f"{log_prefix}sessions.valid": len(va),
                        f"{log_prefix}sessions.test": len(te), f"{log_prefix}query_variant": query_variant or "none",
                        **{f"{log_prefix}ranker.{k}": v for k, v in (overrides or {}).items()}})
    for name, paths in (("features.samples", inputs[:len(days)]),) + ((("queries." + query_variant, inputs[len(days):2 * len(days)]),) if query_variant else ()):
        ctx.tracker.dataset(lake, paths, name, context="training")
    def start(seed: int, held_out: bool):
        """Seed's model before training: built from the seed, then init_from's weights if given (for
        the first pass, init_from's held-out model, so the validation window stays unseen)."""
        model = build(model_name, schema, rcfg["model"], seed)
        if init_from:
            from safetensors.torch import load_file

            src = f"{init_from}/seed={seed}"
            model.load_state_dict(load_file(f"{held_out_path(src) if held_out else src}/model.safetensors"))
        return model

    def epoch_logger(seed: int, prefix: str = ""):
        return lambda row, ep: ctx.tracker.metrics({f"{log_prefix}seed{seed}/{prefix}{k}": v for k, v in row.items() if k != "epoch"}, step=ep)

    results, histories, preds = {}, {}, []
    with lake.write_partition(out, {"fingerprint": fp}) as tmp:
        for seed in rcfg["seeds"]:
            model, hist = fit(start(seed, held_out=True), data, tr, va, rcfg, seed, log_metric=epoch_logger(seed))
            histories[seed] = hist
            kept = max(hist, key=lambda h: h["valid_gauc"])  # the epoch fit restored (its last metric is the last epoch's)
            ctx.tracker.metrics({f"{log_prefix}seed{seed}/best_valid_gauc": kept["valid_gauc"], f"{log_prefix}seed{seed}/best_epoch": kept["epoch"]})
            meta = {"seed": seed, "query_variant": query_variant, "ds": ctx.ds_str}
            if rcfg.get("refit"):  # the same initialisation as the run above, on train + valid
                save(model, Path(tmp) / f"seed={seed}" / HELD_OUT, model_name, schema, rcfg["model"], data.vocab,
                     {**meta, "trained_on": "train", "test": evaluate(model, data, te)})
                model, _ = fit(start(seed, held_out=False), data, np.concatenate([tr, va]), va, rcfg, seed,
                               fixed_epochs=kept["epoch"], log_metric=epoch_logger(seed, "refit_"))
            test = evaluate(model, data, te)
            results[seed] = test
            save(model, Path(tmp) / f"seed={seed}", model_name, schema, rcfg["model"], data.vocab,
                 {**meta, "trained_on": "train+valid" if rcfg.get("refit") else "train", "test": test})
            logits = predict(model, data, te)
            f = data.flat(te, logits)
            preds.append(pa.table({"session_id": f["session_id"], "intent_id": f["intent_id"], "seed": np.full(len(f["score"]), seed),
                                   "score": f["score"].astype(np.float32), "clicked": f["clicked"].astype(np.int8)}))
        pa.parquet.write_table(pa.concat_tables(preds), str(Path(tmp) / "test_predictions.parquet"))
    summary = {}
    for key in ("gauc", "session_gauc", "auc", "recall_at_3", "ndcg_at_3", "logloss"):
        vals = np.array([r[key] for r in results.values()])
        summary[f"test_{key}_mean"], summary[f"test_{key}_std"] = float(vals.mean()), float(vals.std(ddof=1) if len(vals) > 1 else 0.0)
        summary[f"test_{key}_seeds"] = [float(v) for v in vals]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for seed, hist in histories.items():
        ax[0].plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], marker=".", label=f"seed {seed}")
        ax[1].plot([h["epoch"] for h in hist], [h["valid_gauc"] for h in hist], marker=".", label=f"seed {seed}")
    ax[0].set(title=f"{model_name}: train loss", xlabel="epoch")
    ax[1].set(title="validation GAUC", xlabel="epoch")
    ax[1].legend()
    fig.tight_layout()
    ctx.tracker.figure(fig, f"{log_prefix}training_curves.png")
    plt.close(fig)
    ctx.tracker.dict({str(s): r for s, r in results.items()}, f"{log_prefix}test_metrics_by_seed.json")
    ctx.tracker.artifact(str(Path(out) / f"seed={rcfg['seeds'][0]}"), f"{log_prefix}model")
    sps = [h["samples_per_s"] for hist in histories.values() for h in hist]
    # the best validation GAUC each seed reached (the epoch early stopping kept), averaged
    summary["valid_gauc_seeds"] = [float(max(h["valid_gauc"] for h in hist)) for hist in histories.values()]
    summary["valid_gauc_mean"] = float(np.mean(summary["valid_gauc_seeds"]))
    return {**summary, "samples_per_s": float(np.mean(sps)), "epochs_mean": float(np.mean([len(h) for h in histories.values()])),
            "test_sessions": len(te)}
