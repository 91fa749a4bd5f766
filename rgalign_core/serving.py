"""A published ranker: the bundle the model registry holds and serving loads.

A bundle is one folder with all it takes to turn a session's state into its top-K KB questions,
without the lake or the training code:

    bundle.json    what it is: ds, seed, query variant, the reasoner's template, summary cue and
                   max_new_tokens, the reasoner's version
    ranker/        QE-Rec (model.safetensors, config.json) and its score calibrator (calibration.json)
    reasoner/      the reasoner checkpoint (Hugging Face format) that writes the latent query
    kb.parquet     the KB intents it ranks: those active on its ds

``Bundle(path).top_k(sessions, k)``: ``sessions`` are rows of ``features/sessions`` (the features,
``session_time`` and ``prompt``). The reasoner writes each session's latent query and embeds it, QE-Rec
scores every KB intent that existed on the session's day, and the calibrator maps the scores to
click probabilities.

``rgalign_core/serving_model.py`` wraps a bundle as an MLflow model, so a serving host needs
only the registry:

    model = mlflow.pyfunc.load_model("models:/rgalign-qe-rec@champion")
    model.predict(sessions_df, params={"k": 3})   # session_id, user_id, rank, intent_id, ..., prob
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

BUNDLE_META = "bundle.json"
TOP_K_COLUMNS = ["user_id", "session_id", "rank", "intent_id", "intent_title", "intent_category", "prob", "score", "latent_query"]


def write_bundle(dest: str | Path, ranker_dir: str, reasoner_dir: str, kb, meta: dict) -> Path:
    """Assemble a bundle at ``dest`` from a saved ranker (with its ``calibration.json``), a reasoner
    checkpoint and the KB table (pyarrow, ``validated/kb_intents``; inactive intents are dropped)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    dest = Path(dest)
    shutil.copytree(ranker_dir, dest / "ranker")
    if not (dest / "ranker" / "calibration.json").exists():
        raise FileNotFoundError(f"{ranker_dir} has no calibration.json: publish a calibrated ranker (models/qe_rec_calibrated)")
    shutil.copytree(reasoner_dir, dest / "reasoner", ignore=shutil.ignore_patterns("optimizer*", "*.pt"))
    pq.write_table(kb.filter(pc.field("active")), str(dest / "kb.parquet"))
    (dest / BUNDLE_META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return dest


def candidates(sessions, kb):
    """Every session x every KB intent that existed on the session's day, in the ``features/samples``
    schema with a ``day`` column (position 0, no click): what QE-Rec scores for serving."""
    import pandas as pd

    s = sessions.drop(columns=[c for c in ("prompt", "max_event_time_used") if c in sessions.columns])
    k = kb[["intent_id", "category", "title", "created_date"]].rename(
        columns={"category": "intent_category", "title": "intent_title"})
    grid = s.merge(k, how="cross")
    grid["day"] = pd.to_datetime(grid["session_time"]).dt.floor("D")  # the session's day (UTC), as extract_features' dt
    grid["intent_age_days"] = (grid["day"] - pd.to_datetime(grid["created_date"])).dt.days
    grid = grid[grid["intent_age_days"] >= 0].drop(columns="created_date")
    grid["position"], grid["clicked"] = 0, 0
    grid["day"] = grid["day"].to_numpy().astype("datetime64[D]")
    return grid.reset_index(drop=True)


def best_per_session(scored, k: int):
    """The ``k`` best scored rows of each session with their ``rank`` (1 = best): by calibrated prob,
    ties by the ranker's score (isotonic calibration is a step function), then by intent id."""
    scored = scored.sort_values(["session_id", "prob", "score", "intent_id"], ascending=[True, False, False, True], kind="stable")
    scored = scored.assign(rank=scored.groupby("session_id").cumcount() + 1)
    return scored[scored["rank"] <= k].copy()


class Bundle:
    def __init__(self, path: str | Path):
        import pyarrow.parquet as pq

        from rgalign_core.train_ranker import load_model

        self.path = Path(path)
        self.meta = json.loads((self.path / BUNDLE_META).read_text())
        self.ranker, self.vocab, _ = load_model(self.path / "ranker")
        self.calibration = json.loads((self.path / "ranker" / "calibration.json").read_text())
        self.kb = pq.read_table(str(self.path / "kb.parquet")).to_pandas()
        self._reasoner = None

    @property
    def reasoner(self):
        if self._reasoner is None:
            from rgalign_core.reasoner import Reasoner

            self._reasoner = Reasoner.load(self.path / "reasoner", template=self.meta["template"],
                                           summary_cue=self.meta["summary_cue"])
        return self._reasoner

    def queries(self, sessions, batch_size: int = 32, progress: bool = False):
        """The reasoner's latent query and its embedding for each session, as a ``queries/<variant>`` table."""
        from rgalign_core.reasoner import queries_table

        prompts = sessions["prompt"].tolist()
        texts = self.reasoner.generate(prompts, max_new_tokens=int(self.meta["max_new_tokens"]),
                                       batch_size=batch_size, progress=progress)
        emb = self.reasoner.embed(prompts, texts, batch_size=batch_size, progress=progress)
        return queries_table(sessions["session_id"].to_numpy(), texts, emb, self.meta["reasoner_version"])

    def score(self, rows, queries):
        """Calibrated click probabilities for rows in the ``features/samples`` schema (plus ``day``),
        with ``queries`` holding each session's embedding. Returns one row per input row."""
        import pandas as pd

        from rgalign_core import ranking_data
        from rgalign_core.calibration import apply
        from rgalign_core.train_ranker import predict

        data = ranking_data.from_frame(rows, self.vocab, queries, "the bundle's queries")
        idx = np.arange(data.n)
        f = data.flat(idx, predict(self.ranker, data, idx))
        return pd.DataFrame({"session_id": f["session_id"], "user_id": f["user_id"], "intent_id": f["intent_id"],
                             "intent_category": f["intent_category"], "clicked": f["clicked"], "score": f["score"],
                             "prob": apply(self.calibration, f["score"])})

    def top_k(self, sessions, k: int = 3, queries=None, batch_size: int = 32, progress: bool = False):
        """The ``k`` most likely KB questions for each session (``features/sessions`` rows), best first.
        ``queries``: the sessions' embeddings by this bundle's reasoner when already computed."""
        if queries is None:
            queries = self.queries(sessions, batch_size, progress)
        top = best_per_session(self.score(candidates(sessions, self.kb), queries), k)
        titles = dict(zip(self.kb["intent_id"], self.kb["title"]))
        top["intent_title"] = top["intent_id"].map(titles)
        text = dict(zip(queries["session_id"].to_pylist(), queries["latent_query"].to_pylist()))
        top["latent_query"] = top["session_id"].map(text)
        return top[TOP_K_COLUMNS].reset_index(drop=True)
