"""The ranker zoo: one small file per model over shared layers (layers.py)."""
from rgalign_core.models.qe_rec import QERec
from rgalign_core.models.two_tower import TwoTower

MODELS = {"two_tower": TwoTower, "qe_rec": QERec}
