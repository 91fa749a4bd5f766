"""Ranking-Guided Alignment: the losses of RG-SFT, DPO and RG-CL, the model RG-CL trains, and the
token arrays each stage hands to the one DeepSpeed loop (rgalign_core/ds_trainer.py).

* **RG-SFT**: next-token loss on the best-of-N latent query (and the summary the stage appends to
  it); prompt tokens are labelled -100.
* **DPO**: ``-log σ(β[(log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))])`` over the
  (chosen, rejected) queries of a session, with the frozen reference model's log-probabilities;
  logged as TRL does (``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
  ``rewards/margins``); optionally plus a weighted next-token loss on the chosen query and its
  summary (``anchor_*`` rows).
* **RG-CL**: InfoNCE between the reasoner's pooled embedding of prompt + query + summary cue (the
  cue's token), through QE-Rec's query projection, and the frozen QE-Rec intent-tower vector of the
  clicked intent; negatives are the session's other shown intents and the other sessions' clicked
  intents in the batch (a negative with the positive's intent id is masked, it is not a negative).
  Cosine similarities over temperature τ; plus a weighted next-token loss on the query (and the
  summary after the cue, when the rows have one).

Arrays are right-padded; every row has a ``length``, so the trainer can bucket rows of similar
length into one batch and cut each batch to its longest row.
"""
from __future__ import annotations

import numpy as np

IGNORE = -100


# ---- losses --------------------------------------------------------------------------------------

def trim(batch: dict, mask_key: str, keys: list[str]) -> dict:
    """Cut right-padded ``keys`` to the longest row of ``batch[mask_key]``."""
    t = int(batch[mask_key].sum(1).max())
    return {**batch, **{k: batch[k][:, :t] for k in keys}}


def sequence_logps(model, input_ids, attention_mask, labels):
    """Sum of log p(token) over the labelled tokens of each row -> [B]."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != IGNORE
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * keep).sum(-1)


def sft_loss(model, b, trim_padding: bool = True):
    """Mean next-token loss over the labelled tokens of the batch (the query, and the summary when the
    stage appends one); (loss, tokens processed).
    ``trim_padding=False`` keeps every row at the array's full width (the naive way; benchmarks)."""
    if trim_padding:
        b = trim(b, "attention_mask", ["input_ids", "attention_mask", "labels"])
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    return out.loss, int(b["attention_mask"].sum())


def dpo_loss(model, ref, b, beta: float, anchor_weight: float = 0.0):
    """DPO on (chosen, rejected) rows; ``ref`` is the frozen reference. With ``anchor_weight`` and
    ``anchor_*`` rows, plus that x the next-token loss on them (the chosen query and its summary;
    TRL's ``rpo_alpha`` with the summary added), so the pooled cue token keeps what it encodes.
    (loss, tokens, metrics)."""
    import torch
    import torch.nn.functional as F

    logps, n_tokens = {}, 0
    for side in ("chosen", "rejected"):
        s = trim(b, f"{side}_attention_mask", [f"{side}_input_ids", f"{side}_attention_mask", f"{side}_labels"])
        args = (s[f"{side}_input_ids"], s[f"{side}_attention_mask"], s[f"{side}_labels"])
        logps[side] = sequence_logps(model, *args)
        with torch.no_grad():
            logps[f"ref_{side}"] = sequence_logps(ref, *args)
        n_tokens += int(s[f"{side}_attention_mask"].sum())
    chosen = beta * (logps["chosen"] - logps["ref_chosen"])
    rejected = beta * (logps["rejected"] - logps["ref_rejected"])
    loss = -F.logsigmoid(chosen - rejected).mean()
    with torch.no_grad():
        metrics = {"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
                   "rewards/accuracies": float((chosen > rejected).float().mean()),
                   "rewards/margins": float((chosen - rejected).mean()), "dpo_loss": float(loss)}
    if anchor_weight and "anchor_input_ids" in b:
        s = trim(b, "anchor_attention_mask", ["anchor_input_ids", "anchor_attention_mask", "anchor_labels"])
        nll = model(input_ids=s["anchor_input_ids"], attention_mask=s["anchor_attention_mask"], labels=s["anchor_labels"]).loss
        metrics["anchor_nll"] = float(nll.detach())
        loss = loss + anchor_weight * nll
        n_tokens += int(s["anchor_attention_mask"].sum())
    return loss, n_tokens, metrics


def info_nce(q, pos, negs, neg_mask, pos_id, neg_id, tau: float):
    """RG-CL's contrastive loss. q [B, D] projected query embeddings; pos [B, D] the clicked
    intent's vectors; negs [B, K, D] the session's other shown intents (neg_mask [B, K] marks real
    ones); pos_id [B], neg_id [B, K] intent ids. Returns (loss, metrics): pair accuracy (positive
    more similar than a session negative) and the alignment gap (mean cosine of positives minus
    mean cosine of session negatives)."""
    import torch
    import torch.nn.functional as F

    q, pos, negs = F.normalize(q, dim=-1), F.normalize(pos, dim=-1), F.normalize(negs, dim=-1)
    cos_pos = (q * pos).sum(-1)  # [B]
    cos_neg = torch.einsum("bd,bkd->bk", q, negs)  # [B, K]
    cos_batch = q @ pos.T  # [B, B]: other sessions' clicked intents
    neg_mask = neg_mask & (neg_id != pos_id[:, None])
    batch_mask = pos_id[None, :] != pos_id[:, None]  # drops the diagonal and same-intent rows
    logits = torch.cat([cos_pos[:, None], cos_neg.masked_fill(~neg_mask, float("-inf")),
                        cos_batch.masked_fill(~batch_mask, float("-inf"))], 1) / tau
    loss = -torch.log_softmax(logits, 1)[:, 0].mean()
    with torch.no_grad():
        n = neg_mask.sum().clamp(min=1)
        metrics = {"pair_accuracy": float(((cos_pos[:, None] > cos_neg) & neg_mask).sum() / n),
                   "alignment_gap": float(cos_pos.mean() - (cos_neg * neg_mask).sum() / n)}
    return loss, metrics


def rg_cl_loss(model, b, tau: float, lm_weight: float = 0.0):
    """InfoNCE, plus ``lm_weight`` x the next-token loss on the labelled tokens (the query, and the
    summary when the rows have one): without it the contrastive gradient reshapes the hidden states
    the LM head reads and the reasoner forgets how to write queries (measured: mean query length
    6 -> 23 tokens of run-on text). Rows with ``pool_index`` are pooled there (the cue), not at their end."""
    b = trim(b, "attention_mask", ["input_ids", "attention_mask", "labels"])
    q, lm = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"] if lm_weight else None,
                  pool_index=b.get("pool_index"))
    loss, metrics = info_nce(q, b["pos"], b["negs"], b["neg_mask"], b["pos_id"], b["neg_id"], tau)
    metrics["info_nce"] = float(loss.detach())
    if lm is not None:
        metrics["lm_loss"] = float(lm.detach())
        loss = loss + lm_weight * lm
    return loss, int(b["attention_mask"].sum()), metrics


# ---- the model RG-CL trains ----------------------------------------------------------------------

def _query_aligner_cls():
    from torch import nn

    class QueryAligner(nn.Module):
        """The reasoner's pooled embedding (last token, or the cue's at ``pool_index``) through QE-Rec's query projection."""

        def __init__(self, reasoner, projection):
            super().__init__()
            self.reasoner, self.projection = reasoner, projection

        def forward(self, input_ids, attention_mask, labels=None, pool_index=None):
            """(projected embedding [B, D] at the last token, or at ``pool_index`` [B], next-token
            loss on ``labels`` or None)."""
            import torch
            import torch.nn.functional as F

            from rgalign_core.reasoner import Reasoner, last_token_pool

            decoder = getattr(self.reasoner, self.reasoner.base_model_prefix)
            h = decoder(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=Reasoner.position_ids(attention_mask)).last_hidden_state
            lm = None
            if labels is not None:
                logits = self.reasoner.lm_head(h[:, :-1]).float()
                lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
            pooled = (last_token_pool(h, attention_mask) if pool_index is None
                      else h[torch.arange(h.shape[0], device=h.device), pool_index])
            return self.projection(pooled), lm

        def save(self, out_dir: str) -> None:
            import json
            from pathlib import Path

            from safetensors.torch import save_file

            self.reasoner.save_pretrained(out_dir, safe_serialization=True)
            save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()}, f"{out_dir}/{PROJECTION_FILE}")
            Path(out_dir, PROJECTION_CONFIG).write_text(json.dumps(self.projection_config))

    return QueryAligner


PROJECTION_FILE, PROJECTION_CONFIG = "query_projection.safetensors", "query_projection.json"


def load_query_aligner(reasoner_dir: str, projection_dir: str, trainable_layers: int | None = None):
    """The reasoner of ``reasoner_dir`` and the query projection saved in ``projection_dir``: a
    QE-Rec checkpoint (``model.safetensors`` + ``config.json``, its ``query.*`` weights) or an
    RG-CL output (``query_projection.safetensors`` + ``query_projection.json``).

    ``trainable_layers``: None trains the whole reasoner; N freezes all of it but its last N
    decoder layers and final norm (the projection always trains), so RG-CL on a few thousand
    clicked sessions cannot rewrite the whole model."""
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rgalign_core.models.qe_rec import query_projection

    reasoner = AutoModelForCausalLM.from_pretrained(reasoner_dir, local_files_only=True, dtype=torch.float32)
    reasoner.config.use_cache = False
    p = Path(projection_dir)
    if (p / PROJECTION_FILE).exists():
        pc = json.loads((p / PROJECTION_CONFIG).read_text())
        state = load_file(str(p / PROJECTION_FILE))
    else:
        conf = json.loads((p / "config.json").read_text())
        pc = {"query_dim": conf["schema"]["query_dim"], "cfg": conf["model_cfg"]}
        state = {k[len("query."):]: v for k, v in load_file(str(p / "model.safetensors")).items() if k.startswith("query.")}
    if int(pc["query_dim"]) != reasoner.config.hidden_size:
        raise ValueError(f"the query projection in {projection_dir} reads {pc['query_dim']}-d embeddings, "
                         f"the reasoner in {reasoner_dir} has hidden size {reasoner.config.hidden_size}")
    projection = query_projection(int(pc["query_dim"]), pc["cfg"])
    projection.load_state_dict(state)
    if trainable_layers is not None:
        decoder = getattr(reasoner, reasoner.base_model_prefix)
        reasoner.requires_grad_(False)
        for layer in list(decoder.layers)[len(decoder.layers) - int(trainable_layers):]:
            layer.requires_grad_(True)
        decoder.norm.requires_grad_(True)
    model = _query_aligner_cls()(reasoner, projection)
    model.projection_config = pc
    return model


# ---- token arrays --------------------------------------------------------------------------------

def _pad(rows: list[list[int]], value: int, width: int) -> np.ndarray:
    out = np.full((len(rows), width), value, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def prompt_response(tok, template: str, prompts: list[str], responses: list[str], max_len: int, eos: bool = True,
                    summary_cue: str = "", tails: list[str] | None = None):
    """Token ids of prompt and of " response<eos>" for each pair; the prompt is cut from the left
    so the pair fits ``max_len`` (the latest state is at the prompt's end). Without ``eos`` and with
    the reasoner's ``summary_cue`` the ids are those it pools for the query embedding (Reasoner.query_text).
    With ``tails`` (RG-CL's summaries), each " response<cue>" goes on with its "<tail><eos>",
    tokenised apart and cut to the room left (the prompt is cut as without it), so that the ids up
    to the cue stay the pooled ones; the tail is the third id list."""
    from rgalign_core.reasoner import format_prompt

    p_ids = tok([format_prompt(template, p) for p in prompts], add_special_tokens=False)["input_ids"]
    r_ids = tok([f" {r}{summary_cue}{tok.eos_token if eos else ''}" for r in responses], add_special_tokens=False)["input_ids"]
    t_ids = (tok([f"{t}{tok.eos_token}" for t in tails], add_special_tokens=False)["input_ids"] if tails is not None
             else [[] for _ in responses])
    out = []
    for p, r, t in zip(p_ids, r_ids, t_ids):
        r = r[:max_len // 2]
        p = p[max(0, len(p) - (max_len - len(r))):]  # as without a tail: the pooled ids must not depend on it
        out.append((p, r, t[:max(0, min(max_len // 2 - len(r), max_len - len(p) - len(r)))]))
    return out


def sft_arrays(tok, template: str, prompts: list[str], queries: list[str], max_len: int, eos: bool = True,
               summary_cue: str = "", tails: list[str] | None = None) -> dict:
    """Right-padded prompt + response (+ tail) rows, labelled on the response and tail. With
    ``tails``, ``pool_index`` is each row's position of the cue's last token (what is pooled)."""
    parts = prompt_response(tok, template, prompts, queries, max_len, eos, summary_cue, tails)
    ids = [p + r + t for p, r, t in parts]
    labels = [[IGNORE] * len(p) + r + t for p, r, t in parts]
    width = max(len(x) for x in ids)
    out = {"input_ids": _pad(ids, tok.pad_token_id, width), "labels": _pad(labels, IGNORE, width),
           "attention_mask": _pad([[1] * len(x) for x in ids], 0, width).astype(np.int8),
           "length": np.array([len(x) for x in ids], np.int32)}
    if tails is not None:
        out["pool_index"] = np.array([len(p) + len(r) - 1 for p, r, _ in parts], np.int32)
    return out


def document_arrays(tok, docs: list[str], max_len: int) -> dict:
    """One right-padded row per document, every token labelled (language modelling). Unlike packed
    blocks, a prompt and its query are always in the same row, so the model learns the query with
    the whole prompt in view; cut from the left when longer than ``max_len``."""
    ids = [x[-max_len:] for x in tok(docs, add_special_tokens=False)["input_ids"]]
    width = max(len(x) for x in ids)
    return {"input_ids": _pad(ids, tok.pad_token_id, width), "labels": _pad(ids, IGNORE, width),
            "attention_mask": _pad([[1] * len(x) for x in ids], 0, width).astype(np.int8),
            "length": np.array([len(x) for x in ids], np.int32)}


def dpo_arrays(tok, template: str, prompts: list[str], chosen: list[str], rejected: list[str], max_len: int,
               anchor: list[str] | None = None) -> dict:
    """``chosen_*`` and ``rejected_*`` rows; with ``anchor`` (the chosen query and its summary)
    also ``anchor_*`` rows for the NLL term of dpo_loss."""
    out, lengths = {}, []
    sides = [("chosen", chosen), ("rejected", rejected)] + ([("anchor", anchor)] if anchor is not None else [])
    for side, texts in sides:
        a = sft_arrays(tok, template, prompts, texts, max_len)
        out.update({f"{side}_{k}": v for k, v in a.items() if k != "length"})
        lengths.append(a["length"])
    out["length"] = np.max(lengths, axis=0)
    return out


def intent_targets(model, data, idx: np.ndarray, batch_sessions: int = 1024) -> dict:
    """The frozen QE-Rec intent tower's vectors for sessions ``idx`` that have a click: the first
    clicked intent as positive, the other shown intents as negatives. Returns arrays for RG-CL and
    ``rows`` (which of ``idx`` were kept)."""
    import torch

    mask = data.tensors["mask"].numpy()[idx]
    clicked = data.tensors["clicked"].numpy()[idx] > 0
    keep = (clicked & mask).any(1)
    rows = idx[keep]
    first = np.argmax(clicked[keep], 1)
    vecs = []
    model.eval()
    with torch.no_grad():
        for a in range(0, len(rows), batch_sessions):
            vecs.append(model.intent(data.batch(rows[a:a + batch_sessions])).numpy())
    v = np.concatenate(vecs) if vecs else np.zeros((0, mask.shape[1], 1), np.float32)
    n, K = len(rows), mask.shape[1]
    others = np.array([[k for k in range(K) if k != f] for f in first]).reshape(n, K - 1)
    ids = data.intent_id[rows]
    ar = np.arange(n)
    return {"rows": rows, "pos": v[ar, first].astype(np.float32), "pos_id": ids[ar, first].astype(np.int64),
            "negs": v[ar[:, None], others].astype(np.float32), "neg_id": ids[ar[:, None], others].astype(np.int64),
            "neg_mask": data.tensors["mask"].numpy()[rows][ar[:, None], others]}


def alignment_report(model, arrays: dict, tau: float, batch: int = 64) -> dict:
    """RG-CL's loss, pair accuracy and alignment gap of ``model`` on ``arrays`` (no training)."""
    import torch

    n = len(arrays["length"])
    sums, total = {"loss": 0.0, "pair_accuracy": 0.0, "alignment_gap": 0.0}, 0
    model.eval()
    with torch.no_grad():
        for a in range(0, n, batch):
            b = {k: torch.from_numpy(np.asarray(v[a:a + batch])) for k, v in arrays.items()}
            b = {k: (v.long() if v.dtype in (torch.int8, torch.int16, torch.int32) else v) for k, v in b.items()}
            loss, _, m = rg_cl_loss(model, b, tau)  # InfoNCE only
            w = len(b["length"])
            sums["loss"] += float(loss) * w
            for k in ("pair_accuracy", "alignment_gap"):
                sums[k] += m[k] * w
            total += w
    return {k: v / max(total, 1) for k, v in sums.items()}
