"""Ranker inputs as tensors: one row per session, its shown intents along a second axis.

``load(lake, days, kb_rows, query_variant)`` reads ``features/samples/dt=…`` (and, for QE-Rec,
``queries/<variant>/dt=…``) and returns a ``RankData`` whose tensors are sliced by session index
in training (no per-row Dataset). Vocabularies come from the data contract's enums and the KB
snapshot of the logical date, so train, valid and test share them and a cold-start intent has an
id slot (untrained) and, more usefully, its category and title words. ``from_frame`` builds a
RankData from rows in the samples schema that come from elsewhere (serving: every KB intent).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import numpy as np

from rgalign_core import contract

CATEGORICAL = {
    "entry_point": list(contract.ENTRY_POINTS),
    "region": list(contract.REGIONS),
    "language": list(contract.LANGUAGES),
    "vip_tier": list(contract.VIP_TIERS),
    "device_os": list(contract.DEVICE_OS),
    "hour_of_day": list(range(24)),
    "day_of_week": list(range(1, 8)),
}
NUMERIC = [
    "tenure_days", "n_orders", "n_paid", "n_shipped", "n_delayed", "n_delivered", "n_lost", "n_cancelled",
    "n_return_requested", "n_refund_pending", "n_refunded", "h_since_paid", "h_since_shipped", "h_since_delayed",
    "h_since_delivered", "h_since_lost", "h_since_cancelled", "h_since_refunded", "h_refund_pending",
    "n_payment_failed_24h", "h_since_payment_failed", "h_since_voucher_expiring", "h_since_voucher_used",
    "h_since_voucher_claimed", "h_since_login_new_device", "h_since_password_reset", "h_since_app_crash",
    "n_page_views_24h", "n_searches_24h", "n_chat_messages",
]
TITLE_TOKENS = 12
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


@dataclasses.dataclass
class Vocab:
    intent_ids: list[int]  # index i+1 <-> intent id; 0 = unknown
    categories: list[str]
    title_words: list[str]  # index i+1 <-> word; 0 = padding
    intent_titles: list[str] = dataclasses.field(default_factory=list)  # parallel to intent_ids

    @classmethod
    def from_kb(cls, kb_rows: list[dict]) -> "Vocab":
        rows = sorted(kb_rows, key=lambda r: int(r["intent_id"]))
        vocab = sorted({w for r in rows for w in words(r["title"])})
        return cls([int(r["intent_id"]) for r in rows], list(contract.INTENT_CATEGORIES), vocab, [r["title"] for r in rows])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RankData:
    session_id: np.ndarray  # [S]
    user_id: np.ndarray  # [S]
    day: np.ndarray  # [S] datetime64[D]
    region: np.ndarray  # [S] str
    tensors: dict  # name -> torch tensor, first axis = session
    intent_id: np.ndarray  # [S, K] raw ids (0 = padding)
    intent_category: np.ndarray  # [S, K] str
    cold: np.ndarray  # [S, K] bool: intent created within 7 days of the session
    vocab: Vocab
    query_dim: int = 0

    @property
    def n(self) -> int:
        return len(self.session_id)

    def index(self, days: list[dt.date]) -> np.ndarray:
        return np.nonzero(np.isin(self.day, np.array(days, dtype="datetime64[D]")))[0]

    def batch(self, idx) -> dict:
        import torch

        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return {k: v.index_select(0, idx_t) for k, v in self.tensors.items()}

    def flat(self, idx: np.ndarray, scores: np.ndarray) -> dict:
        """Per-impression arrays (mask applied) for metrics over sessions ``idx``."""
        mask = self.tensors["mask"].numpy()[idx]
        rep = lambda a: np.broadcast_to(a[idx][:, None], mask.shape)[mask]  # noqa: E731
        return {
            "session_id": rep(self.session_id), "user_id": rep(self.user_id), "region": rep(self.region),
            "intent_id": self.intent_id[idx][mask], "intent_category": self.intent_category[idx][mask],
            "cold": self.cold[idx][mask], "clicked": self.tensors["clicked"].numpy()[idx][mask],
            "position": self.tensors["position"].numpy()[idx][mask], "score": scores[mask],
        }


def read_samples(lake, days: list[dt.date]):
    """``features/samples`` of ``days`` as one pandas frame with a ``day`` column."""
    import pandas as pd

    parts = []
    for d in days:
        t = lake.read_partition(lake.partition("features", "samples", d), "features.samples").to_pandas()
        t["day"] = np.datetime64(d, "D")
        parts.append(t)
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise ValueError(f"no samples in features/samples for {days[0]}..{days[-1]}")
    return df


def read_queries(lake, variant: str, days: list[dt.date], columns=("session_id", "embedding")):
    """``queries/<variant>`` over ``days`` (``columns`` of it), as one pyarrow table."""
    import pyarrow as pa

    return pa.concat_tables([lake.read_partition(lake.partition("queries", variant, d), f"queries.{variant}",
                                                 columns=list(columns)) for d in days])


def load(lake, days: list[dt.date], kb_rows: list[dict], query_variant: str | None = None, vocab: Vocab | None = None) -> RankData:
    """``features/samples`` of ``days`` (and ``queries/<query_variant>`` for QE-Rec) as a RankData."""
    samples = read_samples(lake, days)
    queries = read_queries(lake, query_variant, days) if query_variant else None
    return from_frame(samples, vocab or Vocab.from_kb(kb_rows), queries, f"queries/{query_variant}")


def from_frame(df, vocab: Vocab, queries=None, queries_name: str = "the queries") -> RankData:
    """Rows in the ``features/samples`` schema plus a ``day`` column (one per session and intent:
    the shown ones for training, every KB intent for serving) as a RankData; ``queries``: a table
    of ``session_id, embedding`` with a row for every session (QE-Rec), or None (two-tower)."""
    import torch

    df = df.sort_values(["session_id", "position"], kind="stable")
    sess = df.drop_duplicates("session_id")
    S = len(sess)
    sid_index = {s: i for i, s in enumerate(sess.session_id.to_numpy())}
    row = df.session_id.map(sid_index).to_numpy()
    col = df.groupby("session_id").cumcount().to_numpy()
    K = int(col.max()) + 1

    def grid(values, fill, dtype):
        out = np.full((S, K), fill, dtype=dtype)
        out[row, col] = values
        return out

    id_index = {i: k + 1 for k, i in enumerate(vocab.intent_ids)}
    word_index = {w: k + 1 for k, w in enumerate(vocab.title_words)}
    cat_index = {c: k for k, c in enumerate(vocab.categories)}
    titles = np.zeros((len(df), TITLE_TOKENS), np.int64)
    for r, title in enumerate(df.intent_title.to_numpy()):
        ids = [word_index.get(w, 0) for w in words(title)][:TITLE_TOKENS]
        titles[r, :len(ids)] = ids
    title_grid = np.zeros((S, K, TITLE_TOKENS), np.int64)
    title_grid[row, col] = titles

    cat = np.stack([sess[f].map({v: k + 1 for k, v in enumerate(vals)}).fillna(0).to_numpy(np.int64)
                    for f, vals in CATEGORICAL.items()], 1)
    raw = sess[NUMERIC].to_numpy(np.float64)
    missing = np.isnan(raw)
    num = np.log1p(np.clip(np.nan_to_num(raw, nan=0.0), 0, None)).astype(np.float32)
    tensors = {
        "cat": torch.from_numpy(cat),
        "num": torch.from_numpy(num),
        "num_missing": torch.from_numpy(missing.astype(np.float32)),
        "intent": torch.from_numpy(grid(df.intent_id.map(id_index).fillna(0).to_numpy(np.int64), 0, np.int64)),
        "intent_cat": torch.from_numpy(grid(df.intent_category.map(cat_index).fillna(0).to_numpy(np.int64), 0, np.int64)),
        "intent_title": torch.from_numpy(title_grid),
        "intent_age": torch.from_numpy(grid(np.log1p(np.clip(df.intent_age_days.to_numpy(np.float64), 0, None)), 0, np.float32)),
        "position": torch.from_numpy(grid(df.position.to_numpy(np.int64), 0, np.int64)),
        "clicked": torch.from_numpy(grid(df.clicked.to_numpy(np.float32), 0, np.float32)),
        "mask": torch.from_numpy(grid(np.ones(len(df), bool), False, bool)),
    }
    query_dim = 0
    if queries is not None:
        q = queries
        query_dim = q.schema.field("embedding").type.list_size
        emb = q["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, query_dim)
        pos = {s: i for i, s in enumerate(q["session_id"].to_pylist())}
        missing_q = [s for s in sid_index if s not in pos]
        if missing_q:
            raise ValueError(f"{len(missing_q)} sessions have no latent-query embedding in {queries_name} "
                             f"(e.g. {missing_q[:3]}); rerun encode_queries for this date")
        tensors["query"] = torch.from_numpy(emb[[pos[s] for s in sess.session_id.to_numpy()]].astype(np.float32))
    return RankData(
        session_id=sess.session_id.to_numpy(), user_id=sess.user_id.to_numpy(), day=sess.day.to_numpy().astype("datetime64[D]"),
        region=sess.region.to_numpy().astype(str), tensors=tensors, intent_id=grid(df.intent_id.to_numpy(np.int64), 0, np.int64),
        intent_category=grid(df.intent_category.to_numpy().astype(str), "", object),
        cold=grid((df.intent_age_days.to_numpy() < 7), False, bool), vocab=vocab, query_dim=query_dim,
    )
