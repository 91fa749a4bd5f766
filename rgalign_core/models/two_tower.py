"""The production baseline: a user/context tower (AutoInt + MoE) and an intent tower, dot product."""
from __future__ import annotations

import torch
from torch import nn

from rgalign_core.models.layers import IntentTower, PositionBias, UserTower


class TwoTower(nn.Module):
    def __init__(self, schema: dict, cfg: dict):
        super().__init__()
        self.user = UserTower(schema["cardinalities"], schema["n_numeric"], cfg)
        self.intent = IntentTower(schema["n_intents"], schema["n_categories"], schema["n_words"], cfg, schema.get("title_dim", 0))
        self.position = PositionBias()
        self.scale = cfg["dim"] ** -0.5

    def forward(self, b, with_position: bool = False):  # -> logits [B, K]
        u, _ = self.user(b)
        v = self.intent(b)
        logits = torch.einsum("bd,bkd->bk", u, v) * self.scale
        return logits + self.position(b["position"]) if with_position else logits
