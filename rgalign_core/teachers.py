"""Teachers: LLMs (or LLM stand-ins) that each write candidate latent queries for a chatbot session.

A *latent query* is the question a user probably has when they open the chatbot, before typing.
Several teachers each write ``n`` candidates per session; a frozen ranker later judges them
(best-of-N), so a teacher only has to be plausible and diverse, not right.

The interface is small::

    teacher.teacher_id                        # a stable name, stored with every candidate
    teacher.generate(sessions, n)             # sessions: rows of features/sessions as dicts
        -> list[list[str]]                    # up to n candidate queries per session, same order

Teachers are built from config *specs* (strings), see ``build_teacher``:

``openai:<base_url>#<model>``
    Any OpenAI-compatible chat-completions endpoint (vLLM, TGI, a hosted API). POSTs to
    ``<base_url>/chat/completions`` (base_url includes ``/v1``, e.g.
    ``openai:http://gpu-box:8000/v1#Qwen/Qwen2.5-7B-Instruct``) with a system message and a user
    message made from the prompt template (``{prompt}`` is replaced by the session's verbalised
    state). Asks for ``n`` choices; when a server ignores ``n`` it is called again until ``n``
    answers are in (``use_n: false`` sends one request per candidate, for servers that reject
    ``n``). Requests run ``max_concurrency`` at a time, each with ``timeout_s``; timeouts,
    connection errors, HTTP 429 and 5xx are retried ``max_retries`` times with exponential
    backoff and jitter (``backoff_s * 2**attempt``, honouring ``Retry-After``); any other 4xx
    fails at once with an error naming the endpoint and the status.

    The API key is read from the environment variable named by ``api_key_env`` (default
    ``OPENAI_API_KEY``; optional, a local vLLM needs none) and sent as ``Authorization: Bearer``.
    It is never logged, never put in errors (server text echoing it is redacted), reprs,
    fingerprints or MLflow params. Do not put credentials in the base URL (refused). Under
    Airflow, take the key from a Connection by templating the task's environment, e.g. in the
    BashOperator ``env={"OPENAI_API_KEY": "{{ conn.rgalign_teacher.password }}", ...}`` (with
    ``append_env=True``); Airflow masks connection passwords in task logs.

``hf:<local path>``
    A local Hugging Face causal LM, sampled through ``rgalign_core.reasoner.Reasoner``
    (``Reasoner.load(path)``, ``reasoner.generate(prompts, max_new_tokens, temperature, seed)``),
    imported only when the teacher is first used. Candidate k of every session is sampled with
    seed ``seed + k``.

``builtin:reasoner``
    The current reasoner (same as ``hf:``); the job resolves its model dir
    (``<lake root>/models/reasoner/ds=<ds>/``, else ``reasoner.base_model`` when that is a
    checkpoint dir) and skips the teacher with a warning when there is none.

``builtin:rules``
    A rule-based writer over the *discrete* session features only (order-status counts, hours
    since payment failure / voucher expiry notice / new-device login / password reset / app
    crash, entry point). Open problems (delayed, lost, payment failed, refund pending...) come
    first, most recent first, then routine order states (paid, shipped, delivered); each maps to a
    few paraphrased questions. With nothing pending it falls back to generic questions for the
    entry point. Deterministic for a seed.

``builtin:retrieval``
    Uses the session's *text* signals (last chat message, recent searches, recently viewed item
    titles, weighted in that order) to retrieve the closest Knowledge-Base intents (the active
    intents in the ``kb_intents`` snapshot of the session's day, passed in by the job) and rewrites
    their titles as first-person questions. ``encoder`` compares the texts: ``minilm`` (the
    default config: all-MiniLM-L6-v2 sentence embeddings of the titles, which match paraphrases),
    a local sentence-encoder directory, or ``tfidf`` (word 1-2 grams over title + answer).
    A session with no text signal, or none close enough (``min_score``), gets no candidate.
    Deterministic for a seed. ``topics(sessions, k)`` gives the KB categories of the same matches
    (bootstrap_reasoner writes them into the reasoner's summary).

``build_teachers(specs, settings, kb=..., reasoner_dir=...)`` builds the job's list;
``build(spec, cfg, kb=..., seed=...)`` builds one from a whole stage config (bootstrap_reasoner).

Teachers read only the session row they are given (features and prompt); never the simulator's
hidden truth (``truth/``) nor clicks. ``dedupe`` removes repeated candidates of a session across
all teachers (normalised text), keeping the first teacher's.
"""
from __future__ import annotations

import abc
import concurrent.futures as cf
import datetime as dt
import logging
import os
import random
import re
import threading
import time
from typing import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from rgalign_core.stage import StageError

log = logging.getLogger("rgalign.teachers")

DEFAULT_SYSTEM = (
    "You are the customer-service assistant of an e-commerce app. You are given a description of a "
    "user's recent state just as they open the help chat. Write the one question this user most "
    "likely wants to ask, in English, in the first person, under 15 words. Reply with the question only."
)
DEFAULT_USER = "User state: {prompt}\nThe user's question:"


class TeacherError(StageError):
    """A teacher cannot produce candidates (bad endpoint, client error, retries exhausted, missing model)."""


class Teacher(abc.ABC):
    """Writes candidate latent queries for chatbot sessions."""

    teacher_id: str

    @abc.abstractmethod
    def generate(self, sessions: list[dict], n: int) -> list[list[str]]:
        """Up to ``n`` candidate queries for each session (a features/sessions row), in order."""

    def close(self) -> None:
        """Release connections / models. Safe to call twice."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.teacher_id!r})"


# ---- helpers ------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise(query: str) -> str:
    """Key for de-duplication: lowercase, punctuation removed, whitespace collapsed."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", (query or "").lower())).strip()


def clean_query(text: str | None, max_chars: int = 200) -> str:
    """First meaningful line of a model's answer, without quotes, labels or list markers."""
    if not text:
        return ""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S | re.I)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:[-*•]\s+|\d+[.)]\s+)", "", line)
    line = re.sub(r"^(?:the user'?s question|question|query|user)\s*:\s*", "", line, flags=re.I)
    line = line.strip().strip("\"'“”‘’`").strip()
    if len(line) > max_chars:
        line = line[:max_chars].rsplit(" ", 1)[0].rstrip()
    return line


def dedupe(session_ids: Sequence[int], per_teacher: Sequence[tuple[str, Sequence[Sequence[str]]]]
           ) -> tuple[list[tuple[int, str, int, str]], int]:
    """Drop repeated candidates per session across all teachers, keeping the first teacher's.

    ``per_teacher`` is ``[(teacher_id, candidates per session)]`` in priority order. Returns the
    kept rows ``(session_id, teacher_id, candidate_idx, latent_query)`` (candidate_idx renumbered
    0.. per teacher and session) and the number of duplicates removed. Empty candidates are
    dropped and not counted.
    """
    rows: list[tuple[int, str, int, str]] = []
    removed = 0
    for i, sid in enumerate(session_ids):
        seen: set[str] = set()
        for tid, cands in per_teacher:
            k = 0
            for q in cands[i]:
                key = normalise(q)
                if not key:
                    continue
                if key in seen:
                    removed += 1
                    continue
                seen.add(key)
                rows.append((int(sid), tid, k, q.strip()))
                k += 1
    return rows, removed


def _rng(seed: int, session: dict, salt: str) -> random.Random:
    # A str seed is hashed with SHA-512 by random.Random: stable across processes (no PYTHONHASHSEED).
    return random.Random(f"{seed}:{salt}:{session.get('session_id')}")


def _lower_first(title: str) -> str:
    """'My item arrived damaged' -> 'my item arrived damaged'; keeps 'I ...' and acronyms."""
    first, _, rest = title.partition(" ")
    if first == "I" or first.startswith("I'") or (len(first) > 1 and first.isupper()):
        return title
    return first[:1].lower() + first[1:] + (" " + rest if rest else "")


# ---- builtin:rules ------------------------------------------------------------------------------

# state -> paraphrased questions (the first is the canonical one)
STATE_QUESTIONS: dict[str, list[str]] = {
    "delayed": ["Why is my order delayed?", "When will my delayed parcel arrive?", "My parcel is late, what can I do?"],
    "lost": ["My parcel is marked lost. What happens now?", "Will I get my money back for the lost parcel?",
             "The courier lost my package, what should I do?"],
    "payment_failed": ["Why did my payment fail?", "My payment failed, how can I pay for my order?",
                       "My card was declined, what should I do?"],
    "refund_pending": ["When will I get my refund?", "Why is my refund still pending?", "How long does my refund take?"],
    "voucher_expiring": ["My voucher is about to expire, how do I use it?", "Can I extend my voucher before it expires?",
                         "Which orders can I use my expiring voucher on?"],
    "login_new_device": ["I see a login from a device I do not know", "Someone logged into my account, is it safe?",
                         "How do I secure my account after a new device login?"],
    "password_reset": ["I reset my password but still cannot log in", "I did not receive the OTP code",
                       "How do I reset my password?"],
    "app_crash": ["Why does the app keep crashing?", "The app crashed, how do I fix it?",
                  "The app closes by itself, what can I do?"],
    "cancelled": ["Why was my order cancelled?", "Will I get a refund for my cancelled order?", "Who cancelled my order?"],
    "return_requested": ["What is the status of my return?", "How do I send back the item I am returning?",
                         "How do I print the return label?"],
    # routine order states: after the problems
    "delivered": ["It says delivered but I have not received it", "How do I return an item I received?",
                  "The item I received is damaged"],
    "shipped": ["Where is my parcel?", "When will my order arrive?", "How do I track my order?"],
    "paid": ["When will my order be shipped?", "How do I cancel my order?", "How do I change my delivery address?"],
}
ROUTINE_STATES = ("delivered", "shipped", "paid")

ENTRY_POINT_QUESTIONS: dict[str, list[str]] = {
    "order_page": ["Where is my parcel?", "How do I cancel my order?", "How do I change my delivery address?"],
    "payment_page": ["Which payment methods can I use?", "Why did my payment fail?", "How do I pay with cash on delivery?"],
    "product_page": ["How do I ask the seller a question?", "Is this product authentic?", "How do I check the warranty?"],
    "push_notification": ["How do I use a voucher?", "How do I turn off promotional messages?", "Where is my parcel?"],
    "help_center": ["How do I return an item?", "How do I reset my password?", "How do I contact customer service?"],
    "home_icon": ["Where is my parcel?", "How do I use a voucher?", "How much is the shipping fee?"],
}
GENERIC_QUESTIONS = ["Where is my parcel?", "How do I return an item?", "How do I use a voucher?"]


def _num(x) -> float | None:
    return None if x is None else float(x)


def pending_states(s: dict) -> list[str]:
    """The session's states worth a question: problems first, then routine ones, most recent first.

    Uses only discrete features (counts, hours since an event); never the text signals.
    """
    def count(col):
        return int(s.get(col) or 0)

    found: list[tuple[int, float, str]] = []  # (tier, hours ago, state)

    def add(state: str, present: bool, hours) -> None:
        if present:
            h = _num(hours)
            found.append((1 if state in ROUTINE_STATES else 0, h if h is not None else 1e9, state))

    add("delayed", count("n_delayed") > 0, s.get("h_since_delayed"))
    add("lost", count("n_lost") > 0, s.get("h_since_lost"))
    add("payment_failed", s.get("h_since_payment_failed") is not None, s.get("h_since_payment_failed"))
    add("refund_pending", count("n_refund_pending") > 0, s.get("h_refund_pending"))
    hv, hu = _num(s.get("h_since_voucher_expiring")), _num(s.get("h_since_voucher_used"))
    add("voucher_expiring", hv is not None and (hu is None or hu > hv), hv)  # not used since the notice
    add("login_new_device", s.get("h_since_login_new_device") is not None, s.get("h_since_login_new_device"))
    add("password_reset", s.get("h_since_password_reset") is not None, s.get("h_since_password_reset"))
    add("app_crash", s.get("h_since_app_crash") is not None, s.get("h_since_app_crash"))
    add("cancelled", count("n_cancelled") > 0, s.get("h_since_cancelled"))
    add("return_requested", count("n_return_requested") > 0, None)
    add("delivered", count("n_delivered") > 0, s.get("h_since_delivered"))
    add("shipped", count("n_shipped") > 0, s.get("h_since_shipped"))
    add("paid", count("n_paid") > 0, s.get("h_since_paid"))
    return [state for _, _, state in sorted(found)]


class RulesTeacher(Teacher):
    """Pending states -> paraphrased questions; entry-point questions when nothing is pending."""

    teacher_id = "builtin:rules"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def questions(self, session: dict, n: int) -> list[str]:
        rng = _rng(self.seed, session, "rules")
        pools = []
        for state in pending_states(session):
            first, *others = STATE_QUESTIONS[state]
            rng.shuffle(others)
            # the canonical wording first, shuffled paraphrases after
            pools.append([first, *others])
        out: list[str] = []
        depth = 0
        # round robin: one question per state (most urgent first), then the next paraphrases
        while len(out) < n and any(depth < len(p) for p in pools):
            for p in pools:
                if depth < len(p) and len(out) < n and p[depth] not in out:
                    out.append(p[depth])
            depth += 1
        if len(out) < n:
            generic = list(ENTRY_POINT_QUESTIONS.get(session.get("entry_point") or "", GENERIC_QUESTIONS))
            out += [q for q in generic if q not in out][: n - len(out)]
        return out[:n]

    def generate(self, sessions: list[dict], n: int) -> list[list[str]]:
        return [self.questions(s, n) for s in sessions]


# ---- builtin:retrieval --------------------------------------------------------------------------

KbSource = Sequence[dict] | Callable[[dt.date], Sequence[dict]]


class RetrievalTeacher(Teacher):
    """Text signals -> closest KB intent titles -> first-person questions.

    ``encoder`` is how text is compared: ``"tfidf"`` (word n-grams over title + answer: lexical,
    blind to paraphrases), ``"minilm"`` (all-MiniLM-L6-v2 sentence embeddings of the titles, see
    ``text_encoder``) or a local sentence-encoder directory. ``kb`` is the list of ``kb_intents``
    rows, or a function day -> rows; with a function each session must carry its day in
    ``session["dt"]`` (the job adds it).
    """

    teacher_id = "builtin:retrieval"
    # signal weights: the chat message says most, searches next (newest first), item titles little
    CHAT_WEIGHT = 1.0
    SEARCH_WEIGHTS = (0.8, 0.6, 0.4)
    ITEM_WEIGHT = 0.2

    def __init__(self, kb: KbSource, seed: int = 0, min_score: float = 0.1, ngram_max: int = 2,
                 encoder: str = "tfidf"):
        self.kb = kb
        self.seed = int(seed)
        self.min_score = float(min_score)
        self.ngram_max = int(ngram_max)
        self.encoder = str(encoder)
        self._indexes: dict[object, tuple] = {}
        if self.encoder != "tfidf":
            from rgalign_core.text_encoder import resolve

            resolve(self.encoder)  # a wrong name fails here, before any work

    def close(self) -> None:
        self._indexes.clear()

    def _index(self, day):
        """(texts -> vectors, the KB's vectors, the KB rows) for a day's active intents, or None."""
        if day not in self._indexes:
            rows = self.kb(day) if callable(self.kb) else self.kb
            rows = sorted((r for r in rows if r.get("active", True) and r.get("title")), key=lambda r: r["intent_id"])
            if not rows:
                self._indexes[day] = None
            elif self.encoder == "tfidf":
                from sklearn.feature_extraction.text import TfidfVectorizer

                vec = TfidfVectorizer(ngram_range=(1, self.ngram_max), sublinear_tf=True)
                matrix = vec.fit_transform([f"{r['title']} {r.get('answer') or ''}" for r in rows])
                self._indexes[day] = (vec.transform, matrix, rows)
            else:
                from rgalign_core import text_encoder

                encoder = text_encoder.shared(self.encoder)
                # titles only: matched on title + answer, weak and discrete needs' topics were worse
                self._indexes[day] = (encoder.encode, encoder.encode([r["title"] for r in rows]), rows)
        return self._indexes[day]

    @classmethod
    def signals(cls, session: dict) -> list[tuple[str, float]]:
        """(text, weight) of the session's text signals; empty when it has none."""
        out = []
        if (session.get("last_chat_message") or "").strip():
            out.append((session["last_chat_message"], cls.CHAT_WEIGHT))
        searches = [t for t in (session.get("recent_searches") or "").split(" | ") if t.strip()]
        out += [(t, w) for t, w in zip(searches, cls.SEARCH_WEIGHTS)]
        out += [(t, cls.ITEM_WEIGHT) for t in (session.get("recent_items") or "").split(" | ") if t.strip()]
        return out

    @staticmethod
    def rewrite(title: str, rng: random.Random) -> str:
        if title.rstrip().endswith("?"):
            templates = ("{title}", "I want to know: {lower}", "Help: {title}")
        else:
            templates = ("{title}", "I think {lower}", "Help: {title}")
        return rng.choice(templates).format(title=title, lower=_lower_first(title))

    def matches(self, sessions: list[dict]):
        """Yields ``(i, kb rows best first)`` for each session with a KB match of at least ``min_score``."""
        import numpy as np
        import scipy.sparse as sp

        by_day: dict[object, list[int]] = {}
        for i, s in enumerate(sessions):
            if callable(self.kb) and s.get("dt") is None:
                raise TeacherError(f"{self.teacher_id}: session {s.get('session_id')} has no 'dt' to pick its day's KB")
            by_day.setdefault(s.get("dt") if callable(self.kb) else None, []).append(i)
        for day, idx in by_day.items():
            index = self._index(day)
            if index is None:
                continue
            embed, matrix, kb_rows = index
            texts, rows, weights = [], [], []
            for r, i in enumerate(idx):
                for text, w in self.signals(sessions[i]):
                    texts.append(text)
                    rows.append(r)
                    weights.append(w)
            if not texts:
                continue
            # each session's query = weighted sum of its signals' vectors, L2-normalised;
            # score = cosine with each KB document
            mix = sp.csr_matrix((weights, (rows, range(len(texts)))), shape=(len(idx), len(texts)))
            queries = mix @ embed(texts)
            if sp.issparse(queries):
                norms = np.sqrt(np.asarray(queries.multiply(queries).sum(axis=1))).ravel()
                scores = np.asarray((queries @ matrix.T).todense())
            else:
                norms, scores = np.linalg.norm(queries, axis=1), queries @ matrix.T
            for r, i in enumerate(idx):
                if norms[r] == 0.0:  # no signal, or none of its words is in the KB's vocabulary
                    continue
                sc = scores[r] / norms[r]
                order = np.lexsort((np.arange(len(kb_rows)), -sc))  # best first, ties by KB order
                best = [kb_rows[j] for j in order if sc[j] >= self.min_score]
                if best:
                    yield i, best

    def generate(self, sessions: list[dict], n: int) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in sessions]
        for i, best in self.matches(sessions):
            rng = _rng(self.seed, sessions[i], "retrieval")
            out[i] = [self.rewrite(r["title"], rng) for r in best[:n]]
        return out

    def topics(self, sessions: list[dict], k: int) -> list[list[str]]:
        """Up to ``k`` KB categories the session's text is about (its best matches' categories,
        distinct, best first); needs ``category`` in the KB rows."""
        out: list[list[str]] = [[] for _ in sessions]
        for i, best in self.matches(sessions):
            cats = []
            for r in best:
                if r.get("category") is None:
                    raise TeacherError(f"{self.teacher_id}: KB intent {r.get('intent_id')} has no category")
                if r["category"] not in cats:
                    cats.append(r["category"])
                if len(cats) == k:
                    break
            out[i] = cats
        return out


# ---- hf: / builtin:reasoner ---------------------------------------------------------------------

class HFTeacher(Teacher):
    """A local causal LM sampled through ``rgalign_core.reasoner.Reasoner`` (imported lazily)."""

    def __init__(self, path: str, teacher_id: str | None = None, max_new_tokens: int = 32, temperature: float = 0.8,
                 seed: int = 0, max_query_chars: int = 200):
        self.path = str(path)
        self.teacher_id = teacher_id or f"hf:{self.path}"
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.max_query_chars = int(max_query_chars)
        self._reasoner = None

    def _load(self):
        if self._reasoner is None:
            try:
                from rgalign_core.reasoner import Reasoner
            except ImportError as e:
                raise TeacherError(f"{self.teacher_id}: rgalign_core.reasoner is not available ({e})") from e
            t0 = time.time()
            self._reasoner = Reasoner.load(self.path)
            log.info("%s: loaded %s in %.1fs", self.teacher_id, self.path, time.time() - t0)
        return self._reasoner

    def generate(self, sessions: list[dict], n: int) -> list[list[str]]:
        reasoner = self._load()
        prompts = [s["prompt"] for s in sessions]
        out: list[list[str]] = [[] for _ in sessions]
        for k in range(n):  # one pass per candidate: seed + k makes the k-th sample of every session
            texts = reasoner.generate(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      seed=self.seed + k)
            for i, t in enumerate(texts):
                q = clean_query(t, self.max_query_chars)
                if q:
                    out[i].append(q)
        return out

    def close(self) -> None:
        self._reasoner = None


# ---- openai: ------------------------------------------------------------------------------------

def _server_error(response, limit: int = 300) -> str:
    """The server's error message (OpenAI-style ``{"error": {"message": ...}}`` or the raw body), short."""
    text = response.text
    try:
        err = response.json().get("error")
        if isinstance(err, dict):
            err = err.get("message") or err
        if err:
            text = str(err)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return (text[:limit] + "...") if len(text) > limit else (text or "no body")


class OpenAITeacher(Teacher):
    """An OpenAI-compatible chat-completions endpoint. See the module docstring."""

    def __init__(self, base_url: str, model: str, *, system: str = DEFAULT_SYSTEM, user_template: str = DEFAULT_USER,
                 temperature: float = 0.8, max_tokens: int = 48, max_concurrency: int = 8, timeout_s: float = 30.0,
                 max_retries: int = 4, backoff_s: float = 0.5, api_key_env: str | None = "OPENAI_API_KEY",
                 use_n: bool = True, max_query_chars: int = 200, extra_body: dict | None = None, seed: int = 0):
        import httpx

        parts = urlsplit(base_url)
        if parts.username or parts.password or parts.query:
            # only say where, never echo what: the URL may hold a secret
            raise TeacherError(f"openai teacher for {parts.hostname}: the base_url must not carry credentials or a "
                               "query string; give the key in the environment variable named by api_key_env")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TeacherError(f"openai teacher: base_url must be http(s)://host[:port]/..., got {base_url!r}")
        if not model:
            raise TeacherError(f"openai teacher: spec needs a model after '#', e.g. openai:{base_url}#my-model")
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/chat/completions"
        self.model = model
        self.teacher_id = f"openai:{model}@{parts.netloc}"
        self.system, self.user_template = system, user_template
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout_s, self.max_retries, self.backoff_s = float(timeout_s), int(max_retries), float(backoff_s)
        self.use_n, self.max_query_chars = bool(use_n), int(max_query_chars)
        self.extra_body = dict(extra_body or {})
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        # The key lives only in the client's headers (httpx masks them in reprs) and in this
        # closure, never in a plain attribute a repr or vars() would show.
        self._redact = (lambda text: text.replace(key, "***")) if key else (lambda text: text)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            log.info("%s: no API key in $%s; sending requests without Authorization", self.teacher_id, api_key_env)
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(self.timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
        )
        self._jitter = random.Random(seed)
        self._lock = threading.Lock()
        self._n_ignored = False  # the server returned fewer choices than asked: ask again
        self.stats = {"requests": 0, "retries": 0}
        self._retry_errors = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

    def __repr__(self) -> str:
        return f"OpenAITeacher({self.teacher_id!r}, endpoint={self.endpoint!r})"

    # -- requests -----------------------------------------------------------------------------
    def messages(self, prompt: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user_template.replace("{prompt}", prompt)}]

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        with self._lock:
            delay = self.backoff_s * (2 ** attempt) * (0.5 + self._jitter.random())
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:  # an HTTP date: keep our own backoff
                pass
        return delay

    def _post(self, body: dict) -> dict:
        """POST with retries on timeouts, connection errors, 429 and 5xx. Returns the JSON body."""
        attempt = 0
        while True:
            retry_after = None
            with self._lock:
                self.stats["requests"] += 1
            try:
                r = self._client.post(self.endpoint, json=body)
            except self._retry_errors as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if 200 <= r.status_code < 300:
                    try:
                        return r.json()
                    except ValueError:
                        raise TeacherError(self._redact(
                            f"teacher {self.teacher_id}: POST {self.endpoint} returned HTTP {r.status_code} "
                            f"with a body that is not JSON: {r.text[:200]!r}")) from None
                if r.status_code == 429 or r.status_code >= 500:
                    reason = f"HTTP {r.status_code} ({_server_error(r, 120)})"
                    retry_after = r.headers.get("retry-after")
                else:
                    raise TeacherError(self._redact(
                        f"teacher {self.teacher_id}: POST {self.endpoint} failed with HTTP {r.status_code} "
                        f"(client error, not retried): {_server_error(r)}. Check the model name, the request "
                        f"settings and the API key in ${self.api_key_env}."))
            if attempt >= self.max_retries:
                raise TeacherError(self._redact(
                    f"teacher {self.teacher_id}: POST {self.endpoint} failed after {attempt + 1} attempts "
                    f"(timeout {self.timeout_s}s); last error: {reason}"))
            delay = self._delay(attempt, retry_after)
            log.warning("%s", self._redact(f"{self.teacher_id}: {reason} from {self.endpoint}; "
                                           f"retry {attempt + 1}/{self.max_retries} in {delay:.2f}s"))
            with self._lock:
                self.stats["retries"] += 1
            time.sleep(delay)
            attempt += 1

    def complete(self, prompt: str, n: int) -> list[str]:
        """n answers for one prompt (fewer only if the server sends empty answers)."""
        answers: list[str] = []
        calls = 0
        while len(answers) < n and calls < n:
            want = n - len(answers)
            body = {"model": self.model, "messages": self.messages(prompt), "temperature": self.temperature,
                    "max_tokens": self.max_tokens, **self.extra_body}
            if self.use_n and want > 1:
                body["n"] = want
            data = self._post(body)
            calls += 1
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list) or not choices:
                raise TeacherError(f"teacher {self.teacher_id}: {self.endpoint} returned no 'choices'")
            got = []
            for c in choices[:want]:
                content = ((c or {}).get("message") or {}).get("content")
                q = clean_query(content if isinstance(content, str) else None, self.max_query_chars)
                if q:
                    got.append(q)
            if self.use_n and want > 1 and len(choices) < want and not self._n_ignored:
                self._n_ignored = True
                log.info("%s: the server ignores 'n' (asked %d, got %d); asking again per candidate",
                         self.teacher_id, want, len(choices))
            answers += got
        return answers

    def generate(self, sessions: list[dict], n: int) -> list[list[str]]:
        if not sessions or n <= 0:
            return [[] for _ in sessions]
        prompts = [s["prompt"] for s in sessions]
        workers = min(self.max_concurrency, len(prompts))
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher") as pool:
            futures = [pool.submit(self.complete, p, n) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        self._client.close()


# ---- registry -----------------------------------------------------------------------------------

BUILTIN = ("rules", "retrieval", "reasoner")


def parse_spec(spec: str) -> tuple[str, str]:
    """'openai:http://h/v1#m' -> ('openai', 'http://h/v1#m'); 'builtin:rules' -> ('builtin', 'rules')."""
    kind, sep, arg = str(spec).partition(":")
    if not sep or kind not in ("openai", "hf", "builtin") or not arg:
        raise TeacherError(f"teacher spec {spec!r}: expected openai:<base_url>#<model>, hf:<local path> "
                           f"or builtin:{{{','.join(BUILTIN)}}}")
    if kind == "builtin" and arg not in BUILTIN:
        raise TeacherError(f"teacher spec {spec!r}: unknown builtin {arg!r}; known: {', '.join(BUILTIN)}")
    return kind, arg


def build_teacher(spec: str, settings: dict | None = None, *, kb: KbSource | None = None,
                  reasoner_dir: str | None = None) -> Teacher:
    """A teacher from its spec and the ``teachers`` config section (see conf/teachers_generate.yaml).

    ``kb`` (rows or day -> rows) is needed by builtin:retrieval, ``reasoner_dir`` by builtin:reasoner.
    """
    settings = settings or {}
    kind, arg = parse_spec(spec)
    seed = int(settings.get("seed", 0))
    max_chars = int(settings.get("max_query_chars", 200))
    if kind == "builtin" and arg == "rules":
        return RulesTeacher(seed=seed)
    if kind == "builtin" and arg == "retrieval":
        if kb is None:
            raise TeacherError("builtin:retrieval needs the Knowledge Base (kb_intents rows)")
        r = settings.get("retrieval") or {}
        return RetrievalTeacher(kb, seed=seed, min_score=r.get("min_score", 0.1), ngram_max=r.get("ngram_max", 2),
                                encoder=r.get("encoder", "tfidf"))
    if kind in ("hf", "builtin"):
        path = arg if kind == "hf" else reasoner_dir
        if not path:
            raise TeacherError("builtin:reasoner needs the reasoner's model dir (none was given)")
        h = settings.get("hf") or {}
        return HFTeacher(path, teacher_id=spec if kind == "builtin" else None,
                         max_new_tokens=h.get("max_new_tokens") or 32, temperature=h.get("temperature", 0.8),
                         seed=seed, max_query_chars=max_chars)
    base_url, _, model = arg.rpartition("#")
    if not base_url:
        raise TeacherError(f"teacher spec {spec!r}: expected openai:<base_url>#<model>")
    o = settings.get("openai") or {}
    prompt = settings.get("prompt") or {}
    return OpenAITeacher(
        base_url, model, system=prompt.get("system", DEFAULT_SYSTEM), user_template=prompt.get("user", DEFAULT_USER),
        temperature=o.get("temperature", 0.8), max_tokens=o.get("max_tokens", 48),
        max_concurrency=o.get("max_concurrency", 8), timeout_s=o.get("timeout_s", 30.0),
        max_retries=o.get("max_retries", 4), backoff_s=o.get("backoff_s", 0.5),
        api_key_env=o.get("api_key_env", "OPENAI_API_KEY"), use_n=o.get("use_n", True),
        max_query_chars=max_chars, extra_body=o.get("extra_body"), seed=seed,
    )


def settings_from_config(cfg: dict) -> dict:
    """The ``teachers`` section of a stage config, with ``hf.max_new_tokens`` defaulting to the
    pipeline's ``reasoner.max_new_tokens``."""
    settings = dict(cfg.get("teachers") or {})
    hf = dict(settings.get("hf") or {})
    if hf.get("max_new_tokens") is None and (cfg.get("reasoner") or {}).get("max_new_tokens"):
        hf["max_new_tokens"] = int(cfg["reasoner"]["max_new_tokens"])
    settings["hf"] = hf
    return settings


def build(spec: str, cfg: dict | None = None, *, kb: KbSource | None = None, reasoner_dir: str | None = None,
          seed: int | None = None) -> Teacher:
    """``build_teacher`` from a whole stage config (its ``teachers`` section, if any), seed overridable.

    For stages other than teachers_generate (e.g. bootstrap_reasoner's corpus of builtin teachers).
    """
    settings = settings_from_config(cfg or {})
    if seed is not None:
        settings["seed"] = int(seed)
    return build_teacher(spec, settings, kb=kb, reasoner_dir=reasoner_dir)


def build_teachers(specs: Iterable[str], settings: dict | None = None, **resources) -> list[Teacher]:
    teachers: list[Teacher] = []
    try:
        for spec in specs:
            teachers.append(build_teacher(spec, settings, **resources))
    except BaseException:
        for t in teachers:
            t.close()
        raise
    ids = [t.teacher_id for t in teachers]
    if len(set(ids)) != len(ids):
        raise TeacherError(f"two teachers have the same id: {ids}")
    return teachers
