"""Layers shared by the rankers: field embeddings, AutoInt attention, a mixture-of-experts head,
the user/context tower and the intent tower."""
from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class FieldEmbedding(nn.Module):
    """Categorical fields by lookup; numeric field i as value·e_i + missing·m_i (FuxiCTR style)."""

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int):
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(c + 1, dim) for c in cardinalities)
        self.num = nn.Parameter(torch.randn(n_numeric, dim) * 0.05)
        self.missing = nn.Parameter(torch.randn(n_numeric, dim) * 0.05)

    def forward(self, cat, num, num_missing):  # -> [B, fields, dim]
        cats = torch.stack([emb(cat[:, i]) for i, emb in enumerate(self.cat)], 1)
        nums = num.unsqueeze(-1) * self.num + num_missing.unsqueeze(-1) * self.missing
        return torch.cat([cats, nums], 1)


class AutoIntLayer(nn.Module):
    """Multi-head self-attention across feature fields with a residual (AutoInt)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.residual = nn.Linear(dim, dim)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return torch.relu(out + self.residual(x))


class MoEHead(nn.Module):
    """A softmax-gated mixture of expert MLPs."""

    def __init__(self, d_in: int, d_out: int, experts: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(d_in, experts)
        self.experts = nn.ModuleList(mlp([d_in, hidden, d_out], dropout) for _ in range(experts))

    def forward(self, x):
        g = torch.softmax(self.gate(x), -1)  # [B, E]
        out = torch.stack([e(x) for e in self.experts], 1)  # [B, E, d_out]
        return (g.unsqueeze(-1) * out).sum(1)


class UserTower(nn.Module):
    """User/context fields -> AutoInt layers -> MoE head. Returns (user vector, field tokens or None)."""

    def __init__(self, cardinalities: list[int], n_numeric: int, cfg: dict, field_tokens: bool = False):
        super().__init__()
        d, D = cfg["field_dim"], cfg["dim"]
        self.fields = FieldEmbedding(cardinalities, n_numeric, d)
        self.autoint = nn.Sequential(*[AutoIntLayer(d, cfg["heads"], cfg["dropout"]) for _ in range(cfg["autoint_layers"])])
        n_fields = len(cardinalities) + n_numeric
        self.head = MoEHead(n_fields * d, D, cfg["experts"], cfg["hidden"], cfg["dropout"])
        # field tokens in the ranking space, for models that attend over them (QE-Rec)
        self.tokens = nn.Linear(d, D) if field_tokens else None

    def forward(self, b):
        x = self.autoint(self.fields(b["cat"], b["num"], b["num_missing"]))
        return self.head(x.flatten(1)), (self.tokens(x) if self.tokens is not None else None)


class IntentTower(nn.Module):
    """Intent id, category, title words (mean of embeddings) and age -> one vector per shown intent.

    An intent id or title word the training window never showed has an embedding no gradient
    ever reached: it would add seed-dependent noise to every cold-start intent's score. So ids and
    words outside ``seen_ids``/``seen_words`` (set by the training loop, saved with the model) are
    read as the shared unknown id 0 / dropped, and in training ``id_dropout`` of the ids are read
    as unknown, so the unknown id learns what an intent is from its category and title alone."""

    def __init__(self, n_intents: int, n_categories: int, n_words: int, cfg: dict, title_dim: int = 0):
        super().__init__()
        D = cfg["dim"]
        self.id = nn.Embedding(n_intents + 1, D)
        self.category = nn.Embedding(n_categories, D)
        self.words = nn.Embedding(n_words + 1, D, padding_idx=0)
        # title_encoder: each intent's title as a frozen sentence embedding (filled by read_titles),
        # which an unseen intent has as fully as a seen one; the vectors are saved with the model and
        # their width (title_dim) with its schema, so loading it needs no encoder
        self.title_encoder = cfg.get("title_encoder") or None
        if self.title_encoder:
            if not title_dim:
                raise ValueError("title_encoder is set but the schema has no title_dim: build the schema with "
                                 "train_ranker.schema_of(data, model_cfg)")
            self.register_buffer("title_text", torch.zeros(n_intents + 1, title_dim))
            self.text = nn.Linear(self.title_text.shape[1], D)
        self.out = mlp([(4 if self.title_encoder else 3) * D + 1, cfg["hidden"], D], cfg["dropout"])
        self.id_dropout = float(cfg.get("id_dropout", 0.0))
        # intent_id false: no id counts as seen, so every intent is the unknown id, read by its category, title and age
        self.use_id = bool(cfg.get("intent_id", True))
        self.register_buffer("seen_ids", torch.full((n_intents + 1,), self.use_id, dtype=torch.bool))
        self.register_buffer("seen_words", torch.ones(n_words + 1, dtype=torch.bool))

    def mark_seen(self, intent, title) -> None:
        """Only these intent ids / title-word ids (tensors of any shape; 0 = none) are known."""
        self.seen_ids.zero_()
        self.seen_ids[intent.unique()] = self.use_id
        self.seen_words.zero_()
        self.seen_words[title.unique()] = True
        self.seen_ids[0] = self.seen_words[0] = True

    def read_titles(self, vectors) -> None:
        """Row i+1: the sentence embedding of intent index i+1's title (row 0, padding, stays zero)."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.shape != self.title_text[1:].shape:
            raise ValueError(f"title_encoder: {tuple(vectors.shape)} title vectors for {len(self.title_text) - 1} intents "
                             "(a vocabulary saved before titles were kept has none: retrain the ranker)")
        self.title_text[1:] = vectors

    def forward(self, b):  # -> [B, K, D]
        ids = torch.where(self.seen_ids[b["intent"]], b["intent"], 0)
        if self.training and self.id_dropout > 0 and self.use_id:  # no id is read otherwise
            ids = ids.masked_fill(torch.rand(ids.shape) < self.id_dropout, 0)
        t = torch.where(self.seen_words[b["intent_title"]], b["intent_title"], 0)
        n = (t > 0).sum(-1, keepdim=True).clamp(min=1)
        title = self.words(t).sum(-2) / n
        parts = [self.id(ids), self.category(b["intent_cat"]), title]
        if self.title_encoder:
            parts.append(self.text(self.title_text[b["intent"]]))
        x = torch.cat(parts + [b["intent_age"].unsqueeze(-1)], -1)
        return self.out(x)


class PositionBias(nn.Module):
    """An additive logit per shown position, used in training only, so the towers learn relevance
    rather than the logging policy's position effect."""

    def __init__(self, positions: int = 16):
        super().__init__()
        self.bias = nn.Embedding(positions, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, position):
        return self.bias(position.clamp(max=self.bias.num_embeddings - 1)).squeeze(-1)
