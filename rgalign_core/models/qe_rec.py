"""QE-Rec: the two towers plus a query tower over the cached latent-query embedding, fused by
attention from each candidate intent over the user's field tokens and the query, then an MLP."""
from __future__ import annotations

import torch
from torch import nn

from rgalign_core.models.layers import IntentTower, PositionBias, UserTower, mlp


def query_projection(query_dim: int, cfg: dict) -> nn.Module:
    """LLM hidden size -> ranking space. RG-CL trains a copy of it together with the reasoner."""
    return nn.Sequential(nn.LayerNorm(query_dim), mlp([query_dim, cfg["hidden"], cfg["dim"]], cfg["dropout"]))


class QERec(nn.Module):
    def __init__(self, schema: dict, cfg: dict):
        super().__init__()
        D = cfg["dim"]
        self.user = UserTower(schema["cardinalities"], schema["n_numeric"], cfg, field_tokens=True)
        self.intent = IntentTower(schema["n_intents"], schema["n_categories"], schema["n_words"], cfg)
        self.query = query_projection(schema["query_dim"], cfg)
        self.fuse = nn.MultiheadAttention(D, cfg["heads"], dropout=cfg["dropout"], batch_first=True)
        self.score = mlp([6 * D, cfg["hidden"], 1], cfg["dropout"])
        self.position = PositionBias()

    def forward(self, b, with_position: bool = False):  # -> logits [B, K]
        u, tokens = self.user(b)
        v = self.intent(b)  # [B, K, D]
        q = self.query(b["query"])  # [B, D]
        context = torch.cat([tokens, q.unsqueeze(1)], 1)  # user field tokens + the query
        f, _ = self.fuse(v, context, context, need_weights=False)  # each intent attends to them
        K = v.shape[1]
        ue, qe = u.unsqueeze(1).expand(-1, K, -1), q.unsqueeze(1).expand(-1, K, -1)
        logits = self.score(torch.cat([f, v, ue, qe, v * qe, v * ue], -1)).squeeze(-1)
        return logits + self.position(b["position"]) if with_position else logits
