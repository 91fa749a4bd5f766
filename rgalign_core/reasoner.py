"""The reasoner: a causal LM that reads a session's verbalised state and writes its latent query.

``Reasoner.load(path)`` loads any Hugging Face causal-LM checkpoint from disk (a Qwen3 model, or
the built-in tiny one that ``jobs/bootstrap_reasoner.py`` builds and trains); nothing is fetched
from a hub. Batches are left-padded; ``embed`` pools the final-layer hidden state of the last
non-pad token of prompt + query + summary cue (last-token pooling), with position ids that ignore
padding so a text gets the same vector alone, left-padded or right-padded in a batch.

The summary cue (``reasoner.summary_cue``, e.g. "\nPending:") is why the pooled vector says
something: a causal LM's last hidden state is trained to predict the next token, and after a query
that is always its end, so pooling the query's last token keeps little of the session. After the
cue the next token is the session's most pressing state, or the KB category its text is about (the
built-in reasoner is trained on both continuations, alternately first), so the pooled state must
encode both. It is the same idea as PromptEOL's '... means in one word:' for sentence embeddings
from decoder LMs.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("rgalign.reasoner")

PAD, EOS = "<|pad|>", "<|endoftext|>"
DEFAULT_TEMPLATE = "Customer state: {prompt}\nQuestion the customer wants to ask:"


# ---- the built-in tiny LLM -----------------------------------------------------------------------

def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on the domain corpus (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")


def build_tiny(tokenizer, arch: dict, seed: int):
    """A small Qwen3 decoder from config, randomly initialised (seeded)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, **arch,
    )
    return Qwen3ForCausalLM(config)


def reasoner_dir(lake, ds, variant: str = "base") -> str:
    """Where a reasoner version for a logical date lives: ``models/reasoner/ds=`` for the base
    (bootstrap_reasoner's built-in tiny one), ``models/reasoner_<variant>/ds=`` for the aligned
    ones (sft, dpo, cl, calibrated)."""
    return lake.partition("models", "reasoner" if variant == "base" else f"reasoner_{variant}", ds, key="ds")


def resolve_reasoner(lake, ds, cfg: dict) -> str | None:
    """The reasoner for this date: ``reasoner.base_model`` when it names a checkpoint (a local
    directory with a config.json, else None), else the bootstrapped built-in one when complete.
    A configured checkpoint wins over a bootstrapped reasoner an earlier run left for the date."""
    base = str((cfg.get("reasoner") or {}).get("base_model") or "builtin:tiny")
    if base != "builtin:tiny":
        return base if Path(base, "config.json").exists() else None
    bootstrapped = reasoner_dir(lake, ds)
    return bootstrapped if lake.is_complete(bootstrapped) else None


def format_prompt(template: str, prompt: str) -> str:
    return template.format(prompt=prompt)


def model_version(path: str | Path) -> str:
    """A content hash of the weights: outputs record it so a stale cache is never reused."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        h.update(f.read_bytes())
    h.update((Path(path) / "config.json").read_bytes())
    return h.hexdigest()[:16]


class Reasoner:
    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE, path: str | None = None, summary_cue: str = ""):
        self.model = model.eval()
        self.tok = tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:  # many checkpoints ship without one
            self.tok.pad_token = self.tok.eos_token
        self.template = template
        self.summary_cue = summary_cue
        self.path = path

    @classmethod
    def load(cls, path: str | Path, template: str | None = None, dtype: str = "float32",
             summary_cue: str | None = None) -> "Reasoner":
        """``template`` and ``summary_cue`` default to those the model was trained with (its rgalign.json)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = str(path)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
        meta_file = Path(path) / "rgalign.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        template = template if template is not None else meta.get("template")
        summary_cue = summary_cue if summary_cue is not None else meta.get("summary_cue")
        return cls(model, tok, template or DEFAULT_TEMPLATE, path, summary_cue or "")

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def version(self) -> str:
        return model_version(self.path) if self.path else "in-memory"

    def format(self, prompt: str) -> str:
        return format_prompt(self.template, prompt)

    # ---- batching -----------------------------------------------------------------------------
    def _batches(self, texts: list[str], batch_size: int, sort: bool = True, pad_to: int | None = None):
        """Index batches, longest first when ``sort`` (less padding); yields (indices, encodings).

        ``pad_to`` pads every batch to that fixed length instead (the naive way; benchmarks only).
        """
        lengths = [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable") if sort else np.arange(len(texts))
        padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
        for a in range(0, len(texts), batch_size):
            idx = order[a:a + batch_size]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", add_special_tokens=False, **padding)
            yield idx, enc

    @staticmethod
    def position_ids(mask):
        """Positions counted over real tokens only, so padding never shifts RoPE."""
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, prompts: list[str], max_new_tokens: int = 24, temperature: float = 0.0, seed: int = 0,
                 batch_size: int = 32, progress: bool = False) -> list[str]:
        """Latent queries for the prompts: greedy when temperature == 0, else sampled (seeded)."""
        import torch
        from tqdm import tqdm

        out: list[str] = [""] * len(prompts)
        texts = [self.format(p) for p in prompts]
        torch.manual_seed(seed)
        batches = self._batches(texts, batch_size)
        for idx, enc in tqdm(batches, total=-(-len(texts) // batch_size), desc="generate", unit="batch", disable=not progress):
            with torch.no_grad():
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                    pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                out[i] = row.strip().split("\n")[0].strip()
        return out

    # ---- last-token pooling -------------------------------------------------------------------
    def embed_texts(self, texts: list[str], batch_size: int = 32, sort: bool = True, progress: bool = False,
                    pad_to: int | None = None) -> np.ndarray:
        """Final-layer hidden state at the last non-pad token of each text, as float32 [n, hidden]."""
        import torch
        from tqdm import tqdm

        out = np.zeros((len(texts), self.hidden_size), np.float32)
        decoder = getattr(self.model, self.model.base_model_prefix)  # skip the LM head: pooling needs no logits
        batches = self._batches(texts, batch_size, sort, pad_to)
        for idx, enc in tqdm(batches, total=-(-len(texts) // batch_size), desc="embed", unit="batch", disable=not progress):
            with torch.no_grad():
                h = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                            position_ids=self.position_ids(enc["attention_mask"])).last_hidden_state
            out[idx] = last_token_pool(h, enc["attention_mask"]).float().numpy()
        return out

    def query_text(self, prompt: str, query: str) -> str:
        """What ``embed`` pools: prompt, query and the summary cue (alignment.prompt_response builds the same ids)."""
        return f"{self.format(prompt)} {query}".rstrip() + self.summary_cue

    def embed(self, prompts: list[str], queries: list[str], **kw) -> np.ndarray:
        return self.embed_texts([self.query_text(p, q) for p, q in zip(prompts, queries)], **kw)


def last_token_pool(hidden, mask):
    """hidden [b, t, d], mask [b, t] -> [b, d] at each row's last real token (left or right padded)."""
    import torch

    t = mask.shape[1]
    last = t - 1 - torch.argmax(mask.flip(1).long(), dim=1)  # index of the last 1 in each row
    return hidden[torch.arange(hidden.shape[0]), last]


def queries_table(session_ids, queries: list[str], emb, version: str):
    """The ``queries/<variant>`` schema: session_id, latent_query, embedding (fixed-size float32
    list, one row of ``emb`` per session) and reasoner_version."""
    import pyarrow as pa

    return pa.table({
        "session_id": session_ids,
        "latent_query": pa.array(queries, type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), emb.shape[1]),
        "reasoner_version": pa.array([version] * len(queries), type=pa.string()),
    })
