"""Teachers: the OpenAI-compatible kind against a real local HTTP server, the builtin ones, the job.

The server below is a small real HTTP server on 127.0.0.1 (port 0) speaking
``POST /v1/chat/completions``; the teacher talks to it through its real httpx client. Its
behaviour per test (errors, slowness, ignoring ``n``) is scripted, and it records what it saw.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from rgalign_core import contract, sim_world
from rgalign_core import teachers as T
from rgalign_core.lake import Lake
from rgalign_core.stage import StageError

KEY_ENV = "RGALIGN_TEST_TEACHER_KEY"
KEY = "sk-test-9f8e7d6c5b4a-SECRET"
MODEL = "tiny-chat-model"


# ---- a real OpenAI-compatible server ------------------------------------------------------------

class FakeLLM:
    """Scripted chat-completions server state. ``mode`` picks the behaviour:

    ok | 5xx_once | 429_once | slow_once | always_503 | 404 | 401_echo | ignore_n
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "ok"
        self.delay_s = 0.0  # every request sleeps this long (concurrency test)
        self.slow_s = 1.0  # slow_once: the first attempt of each prompt sleeps this long
        self.fixed_first: str | None = None  # when set, the first choice always says this
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.attempts: collections.Counter = collections.Counter()  # by user message
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    def reply(self, headers: dict, body: dict, attempt: int) -> tuple[int, dict, dict, float]:
        """(status, JSON payload, extra headers, seconds to wait before answering)."""
        user = body["messages"][-1]["content"]
        n = 1 if self.mode == "ignore_n" else int(body.get("n", 1))
        ok = {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
              "choices": [{"index": i, "message": {"role": "assistant",
                                                   "content": f" \"Why is my order late (option {attempt}.{i})?\"\n"},
                           "finish_reason": "stop"} for i in range(n)]}
        if self.fixed_first and ok["choices"]:
            ok["choices"][0]["message"]["content"] = self.fixed_first
        if self.mode == "5xx_once" and attempt == 1:
            return 502, {"error": "bad gateway"}, {}, 0
        if self.mode == "429_once" and attempt == 1:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}, 0
        if self.mode == "always_503":
            return 503, {"error": "overloaded"}, {}, 0
        if self.mode == "404":
            return 404, {"error": {"message": f"model '{body['model']}' does not exist"}}, {}, 0
        if self.mode == "401_echo":  # a server that echoes the credentials it got
            return 401, {"error": f"invalid key in header {headers.get('authorization')}"}, {}, 0
        if self.mode == "slow_once" and attempt == 1:
            return 200, ok, {}, self.slow_s
        return 200, ok, {}, self.delay_s


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_POST(self):
        llm: FakeLLM = self.server.llm
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            status, payload, extra, wait = 404, {"error": f"no route {self.path}"}, {}, 0
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            with llm.lock:
                llm.requests.append((headers, body))
                key = body["messages"][-1]["content"]
                llm.attempts[key] += 1
                attempt = llm.attempts[key]
                llm.in_flight += 1
                llm.max_in_flight = max(llm.max_in_flight, llm.in_flight)
            try:
                status, payload, extra, wait = llm.reply(headers, body, attempt)
                time.sleep(wait)
            finally:
                with llm.lock:
                    llm.in_flight -= 1
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.llm = FakeLLM()
    server.llm.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.llm
    server.shutdown()
    server.server_close()


def openai_settings(**openai) -> dict:
    return {
        "seed": 1,
        "prompt": {"system": "You write the user's question.", "user": "State: {prompt}\nQuestion:"},
        "openai": {"temperature": 0.7, "max_tokens": 32, "max_concurrency": 4, "timeout_s": 2, "max_retries": 3,
                   "backoff_s": 0.01, "api_key_env": KEY_ENV, **openai},
    }


def sessions(k: int) -> list[dict]:
    return [{"session_id": 100 + i, "prompt": f"A customer #{i} with 1 delayed order(s), delay reported {i}h ago."}
            for i in range(k)]


@pytest.fixture
def teacher_factory(llm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    made = []

    def make(**openai):
        t = T.build_teacher(f"openai:{llm_server.url}/v1#{MODEL}", openai_settings(**openai))
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


# ---- openai: ------------------------------------------------------------------------------------

def test_openai_success_request_body_and_auth(llm_server, teacher_factory):
    teacher = teacher_factory()
    out = teacher.generate(sessions(2), 2)
    assert out == [["Why is my order late (option 1.0)?", "Why is my order late (option 1.1)?"]] * 2
    assert len(llm_server.requests) == 2  # n=2 in one request per session
    headers, body = llm_server.requests[0]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == MODEL and body["temperature"] == 0.7 and body["n"] == 2 and body["max_tokens"] == 32
    assert body["messages"][0] == {"role": "system", "content": "You write the user's question."}
    prompts = {b["messages"][1]["content"] for _, b in llm_server.requests}
    assert prompts == {f"State: {s['prompt']}\nQuestion:" for s in sessions(2)}
    assert teacher.teacher_id == f"openai:{MODEL}@{llm_server.url.split('//')[1]}"


def test_openai_without_key_sends_no_authorization(llm_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    teacher = T.build_teacher(f"openai:{llm_server.url}/v1#{MODEL}", openai_settings())
    try:
        assert teacher.generate(sessions(1), 1) == [["Why is my order late (option 1.0)?"]]
    finally:
        teacher.close()
    assert "authorization" not in llm_server.requests[0][0]


@pytest.mark.parametrize("mode", ["5xx_once", "429_once"])
def test_openai_retries_5xx_and_429(llm_server, teacher_factory, mode):
    llm_server.mode = mode
    out = teacher_factory().generate(sessions(3), 1)
    assert out == [["Why is my order late (option 2.0)?"]] * 3  # the second attempt answered
    assert sorted(llm_server.attempts.values()) == [2, 2, 2]


def test_openai_retries_after_timeout(llm_server, teacher_factory):
    llm_server.mode, llm_server.slow_s = "slow_once", 1.5
    t0 = time.time()
    out = teacher_factory(timeout_s=0.3).generate(sessions(1), 1)
    assert out == [["Why is my order late (option 2.0)?"]]
    assert list(llm_server.attempts.values()) == [2]
    assert time.time() - t0 < 1.4  # gave up on the slow attempt instead of waiting for it


def test_openai_gives_up_after_max_retries(llm_server, teacher_factory):
    llm_server.mode = "always_503"
    with pytest.raises(T.TeacherError, match=r"chat/completions failed after 3 attempts.*HTTP 503"):
        teacher_factory(max_retries=2).generate(sessions(1), 1)
    assert list(llm_server.attempts.values()) == [3]


def test_openai_retries_connection_errors(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(KEY_ENV, KEY)
    teacher = T.build_teacher(f"openai:http://127.0.0.1:{port}/v1#{MODEL}", openai_settings(max_retries=1))
    try:
        with pytest.raises(T.TeacherError, match=r"failed after 2 attempts.*ConnectError"):
            teacher.generate(sessions(1), 1)
        assert teacher.stats == {"requests": 2, "retries": 1}
    finally:
        teacher.close()


def test_openai_4xx_fails_fast_with_clear_error(llm_server, teacher_factory):
    llm_server.mode = "404"
    t0 = time.time()
    with pytest.raises(T.TeacherError) as err:
        teacher_factory().generate(sessions(1), 2)
    msg = str(err.value)
    assert f"{llm_server.url}/v1/chat/completions" in msg and "HTTP 404" in msg and "not retried" in msg
    assert f"model '{MODEL}' does not exist" in msg
    assert list(llm_server.attempts.values()) == [1]
    assert time.time() - t0 < 1.0


def test_openai_concurrency_limit(llm_server, teacher_factory):
    llm_server.delay_s = 0.15
    out = teacher_factory(max_concurrency=3).generate(sessions(12), 1)
    assert len(out) == 12 and all(len(c) == 1 for c in out)
    assert 2 <= llm_server.max_in_flight <= 3  # in parallel, never more than the limit


def test_openai_server_ignoring_n_is_asked_again(llm_server, teacher_factory):
    llm_server.mode = "ignore_n"
    out = teacher_factory().generate(sessions(2), 3)
    assert [len(c) for c in out] == [3, 3]
    assert sorted(llm_server.attempts.values()) == [3, 3]
    assert [b.get("n") for _, b in llm_server.requests if b["messages"][1]["content"].endswith("0h ago.\nQuestion:")] \
        == [3, 2, None]  # asks for what is still missing


def test_openai_api_key_never_in_logs_errors_or_repr(llm_server, teacher_factory, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "rgalign"):
        caplog.set_level(logging.DEBUG, logger=name)
    teacher = teacher_factory()
    llm_server.mode = "5xx_once"
    teacher.generate(sessions(1), 1)  # logs a retry warning
    llm_server.mode = "401_echo"
    with pytest.raises(T.TeacherError) as err:
        teacher.generate(sessions(1), 1)
    assert "HTTP 401" in str(err.value) and "***" in str(err.value)  # the echoed key was redacted
    assert "retry 1/3" in caplog.text
    for text in (caplog.text, str(err.value), repr(err.value), repr(teacher), str(vars(teacher))):
        assert KEY not in text


def test_openai_refuses_credentials_in_url(monkeypatch):
    with pytest.raises(T.TeacherError, match="must not carry credentials") as err:
        T.build_teacher("openai:http://user:hunter2@127.0.0.1:1/v1#m", openai_settings())
    assert "hunter2" not in str(err.value)
    with pytest.raises(T.TeacherError, match="openai:<base_url>#<model>"):
        T.build_teacher("openai:#m", openai_settings())
    with pytest.raises(T.TeacherError, match="unknown builtin"):
        T.build_teacher("builtin:oracle")


# ---- builtin teachers -----------------------------------------------------------------------------

def kb_rows(active_only: bool = True) -> list[dict]:
    """The simulator's Knowledge Base, as validated kb_intents rows."""
    rows = []
    for i, (title, cat, _, _, active) in enumerate(sim_world.KB, start=1):
        rows.append(dict(intent_id=i, title=title, category=cat, created_date=dt.date(2026, 1, 1), active=active,
                         answer=sim_world.ANSWER_TEMPLATE.format(title=title, cat=cat.replace("_", " "))))
    return rows


def session(**kw) -> dict:
    base = dict(session_id=1, entry_point="home_icon", prompt="A customer.", n_paid=0, n_shipped=0, n_delayed=0,
                n_delivered=0, n_lost=0, n_cancelled=0, n_return_requested=0, n_refund_pending=0,
                recent_searches=None, last_chat_message=None, recent_items=None)
    return {**base, **kw}


DELAYED = session(session_id=7, entry_point="order_page", n_delayed=1, h_since_delayed=6.0, n_paid=1, h_since_paid=1.0)


def test_rules_delayed_order():
    rules = T.build_teacher("builtin:rules", {"seed": 3})
    [one] = rules.generate([DELAYED], 1)
    assert one == ["Why is my order delayed?"]
    [three] = rules.generate([DELAYED], 3)
    # the open problem first (though the payment is more recent), then the routine state, then a paraphrase
    assert three[:2] == ["Why is my order delayed?", "When will my order be shipped?"]
    assert three[2] in T.STATE_QUESTIONS["delayed"][1:]


def test_rules_use_discrete_features_only_and_fall_back_by_entry_point():
    rules = T.RulesTeacher(seed=0)
    text_only = session(entry_point="product_page", last_chat_message="my parcel is delayed", recent_searches="parcel delayed")
    assert rules.generate([text_only], 2) == [["How do I ask the seller a question?", "Is this product authentic?"]]
    recent_first = session(h_since_payment_failed=2.0, h_since_app_crash=30.0, h_since_login_new_device=10.0)
    assert rules.generate([recent_first], 3) == [[T.STATE_QUESTIONS[s][0] for s in
                                                  ("payment_failed", "login_new_device", "app_crash")]]
    # a voucher used after the expiry notice is no longer pending
    used = session(h_since_voucher_expiring=20.0, h_since_voucher_used=5.0)
    assert "voucher_expiring" not in T.pending_states(used)


# both encoders, with the default config's thresholds
ENCODERS = pytest.mark.parametrize("encoder", [{"encoder": "tfidf", "min_score": 0.1}, {"encoder": "minilm", "min_score": 0.3}],
                                   ids=["tfidf", "minilm"])


@ENCODERS
def test_retrieval_finds_the_kb_title(encoder):
    retrieval = T.build_teacher("builtin:retrieval", {"seed": 0, "retrieval": encoder}, kb=kb_rows())
    broken = session(session_id=2, last_chat_message="my item arrived broken")
    nothing = session(session_id=3)
    out = retrieval.generate([broken, nothing], 2)
    assert "my item arrived damaged" in T.normalise(out[0][0])
    assert len(out[0]) == 2 and out[1] == []  # no text signal: nothing (other teachers cover it)
    # inactive intents are never proposed
    flash = session(session_id=4, last_chat_message="what are the flash sale rules")
    assert all("flash sale" not in q.lower() for q in retrieval.generate([flash], 3)[0])


@ENCODERS
def test_retrieval_topics_are_the_categories_its_text_is_about(encoder):
    retrieval = T.build_teacher("builtin:retrieval", {"seed": 0, "retrieval": encoder}, kb=kb_rows())
    broken = session(session_id=2, last_chat_message="my item arrived broken")
    charged = session(session_id=3, last_chat_message="I was charged twice for my order")
    nothing = session(session_id=4)
    one = retrieval.topics([broken, charged, nothing], 1)
    assert one == [["product_seller"], ["payment"], []]  # no text signal: no topic
    two = retrieval.topics([broken], 2)[0]
    assert two[0] == "product_seller" and len(two) == 2 and two[1] != two[0]  # distinct, best first
    with pytest.raises(T.TeacherError, match="no category"):
        T.RetrievalTeacher([{k: v for k, v in r.items() if k != "category"} for r in kb_rows()]).topics([broken], 1)


def test_retrieval_uses_the_kb_of_the_sessions_day():
    day1, day2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    kb = {day1: kb_rows()[:8], day2: kb_rows()}
    retrieval = T.RetrievalTeacher(lambda d: kb[d])
    s1 = session(session_id=1, dt=day1, last_chat_message="my item arrived broken")
    s2 = session(session_id=2, dt=day2, last_chat_message="my item arrived broken")
    a, b = retrieval.generate([s1, s2], 1)
    assert all("damaged" not in q for q in a)  # not in day 1's KB
    assert "my item arrived damaged" in T.normalise(b[0])


def test_sentence_encoder_reads_paraphrases_tfidf_misses():
    """all-MiniLM-L6-v2 (the default encoder) matches what the user typed by meaning: TF-IDF sends
    "cracked on arrival" to "cash on delivery" by its one shared word."""
    texts = ["cracked on arrival", "return and refund request", "hi, tracking says lost please"]
    sessions = [session(session_id=i, last_chat_message=m) for i, m in enumerate(texts)]
    items_only = session(session_id=9, recent_items="Wireless Earbuds")
    minilm = T.build_teacher("builtin:retrieval", {"retrieval": {"encoder": "minilm", "min_score": 0.3}}, kb=kb_rows())
    assert minilm.topics(sessions + [items_only], 1) == [["product_seller"], ["returns_refunds"], ["logistics"], []]
    assert "arrived damaged" in minilm.generate(sessions[:1], 1)[0][0]
    tfidf = T.build_teacher("builtin:retrieval", {"retrieval": {"encoder": "tfidf"}}, kb=kb_rows())
    assert tfidf.topics(sessions[:2], 1) == [["payment"], ["order_changes"]]


def test_sentence_encoder_vectors_do_not_depend_on_the_batch():
    from rgalign_core.text_encoder import SentenceEncoder

    enc = SentenceEncoder.load("minilm", batch_size=2)
    texts = ["where is my parcel", "my card was declined at checkout please help", "refund", "where is my parcel"]
    vecs = enc.encode(texts)
    assert vecs.shape == (4, 384) and abs(float((vecs ** 2).sum(1).max()) - 1.0) < 1e-5
    alone = SentenceEncoder.load("minilm", batch_size=64).encode([texts[1]])
    assert abs(vecs[1] - alone[0]).max() < 1e-5 and (vecs[0] == vecs[3]).all()


def test_sentence_encoder_refuses_unknown_names_and_other_weights(monkeypatch, tmp_path):
    from rgalign_core import text_encoder

    with pytest.raises(StageError, match="expected 'tfidf', 'minilm' or a local"):
        T.build_teacher("builtin:retrieval", {"retrieval": {"encoder": str(tmp_path / "nope")}}, kb=kb_rows())
    monkeypatch.setattr(text_encoder, "MINILM_SHA256", "0" * 64)
    with pytest.raises(StageError, match="not the official all-MiniLM-L6-v2"):
        text_encoder.SentenceEncoder.load("minilm")


def test_builtin_teachers_are_deterministic():
    many = [DELAYED, session(session_id=9, last_chat_message="charged twice for my order", h_since_payment_failed=3.0),
            session(session_id=11, recent_searches="how to return phone case | voucher not working", n_delivered=2,
                    h_since_delivered=4.0, entry_point="help_center")]
    for spec in ("builtin:rules", "builtin:retrieval"):
        a = T.build_teacher(spec, {"seed": 5}, kb=kb_rows()).generate(many, 3)
        b = T.build_teacher(spec, {"seed": 5}, kb=kb_rows()).generate(list(reversed(many)), 3)
        assert a == list(reversed(b)), spec  # same seed -> same candidates, whatever the batch order


def test_dedupe_across_teachers_keeps_the_first_teachers():
    per_teacher = [
        ("builtin:rules", [["Where is my parcel?", "Why is my order delayed?"], ["How do I return an item?"]]),
        ("builtin:retrieval", [["where is my parcel", "Help: Where is my parcel?", "  WHY is my order delayed!! "],
                               ["How do I return an item?"]]),
        ("openai:m@h", [["Where is my parcel ?", "", "Is my parcel lost?"], []]),
    ]
    rows, removed = T.dedupe([1, 2], per_teacher)
    assert removed == 4
    assert rows == [
        (1, "builtin:rules", 0, "Where is my parcel?"), (1, "builtin:rules", 1, "Why is my order delayed?"),
        (1, "builtin:retrieval", 0, "Help: Where is my parcel?"),
        (1, "openai:m@h", 0, "Is my parcel lost?"),
        (2, "builtin:rules", 0, "How do I return an item?"),
    ]


def test_hf_teacher_samples_through_the_reasoner(tmp_path):
    path = tiny_causal_lm(tmp_path / "tiny_lm")
    teacher = T.build_teacher(f"hf:{path}", {"seed": 2, "hf": {"max_new_tokens": 6, "temperature": 1.0}})
    batch = [DELAYED, session(session_id=8, prompt="A customer whose payment failed 2h ago.")]
    a = teacher.generate(batch, 2)
    # sampled at temperature 1 from a random model: 2 distinct non-empty words-of-the-vocab strings each
    assert len(a) == 2 and all(len(c) == 2 and len(set(c)) == 2 and all(q.strip() for q in c) for c in a)
    assert a == teacher.generate(batch, 2)  # deterministic for a seed
    teacher.close()


def tiny_causal_lm(path) -> str:
    """A randomly initialised 1-layer GPT-2 with a word-level tokenizer, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "a customer whose payment failed order delayed why is my where parcel . ? h ago 1 2 with".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(path)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=2, pad_token_id=1)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return str(path)


# ---- the job on a tiny lake ---------------------------------------------------------------------

DS = dt.date(2026, 3, 5)
WINDOWS = {"windows.train_days": 2, "windows.valid_days": 1, "windows.test_days": 1}
TRAIN = [dt.date(2026, 3, 2), dt.date(2026, 3, 3)]


def build_lake(lake: Lake) -> dict:
    """features/sessions for the train days and validated kb_intents snapshots; returns sessions by day."""
    by_day = {
        TRAIN[0]: [
            {**DELAYED, "session_id": 1, "last_chat_message": "hi, parcel delayed?",
             "prompt": "A regular customer opened the help chat from the order page. 1 delayed order(s). "
                       "Last chat message: \"hi, parcel delayed?\"."},
            session(session_id=2, entry_point="product_page", n_delivered=1, h_since_delivered=20.0,
                    last_chat_message="my item arrived broken", recent_items="Slim Phone Case",
                    prompt="A gold VIP customer opened the help chat from the product page. 1 order(s) delivered. "
                           "Last chat message: \"my item arrived broken\". Recently viewed: Slim Phone Case."),
        ],
        TRAIN[1]: [
            session(session_id=3, h_since_payment_failed=2.0,
                    prompt="A regular customer opened the help chat from the home icon. A payment failed 2h ago."),
            session(session_id=4, entry_point="order_page", n_paid=1, h_since_paid=3.0,
                    recent_searches="cancel order | cheap earbuds",
                    prompt="A customer opened the help chat from the order page. 1 order(s) paid. "
                           "Recent searches: cancel order | cheap earbuds."),
        ],
    }
    columns = sorted({k for rows in by_day.values() for r in rows for k in r})
    for day, rows in by_day.items():
        rows = [{c: r.get(c) for c in columns} for r in rows]
        lake.write_table(lake.partition("features", "sessions", day), pa.Table.from_pylist(rows), {"fingerprint": f"f{day}"})
        kb = pa.Table.from_pylist(kb_rows(), schema=contract.KB_INTENTS.schema)
        lake.write_table(lake.partition("validated", "kb_intents", day), kb, {"fingerprint": "kb"})
    return by_day


def test_job_end_to_end(tmp_path, overrides, llm_server, monkeypatch):
    import mlflow

    from jobs import teachers_generate

    monkeypatch.setenv(KEY_ENV, KEY)
    llm_server.fixed_first = "why is my order delayed"  # repeats the rules teacher's question for session 1
    lake = Lake(str(tmp_path / "lake"))
    build_lake(lake)
    read = []  # every partition the job opens: never truth/ nor clicks
    real_read = Lake.read_partition
    monkeypatch.setattr(Lake, "read_partition", lambda self, path, *a, **k: read.append(path) or real_read(self, path, *a, **k))

    openai = f"openai:{llm_server.url}/v1#{MODEL}"
    sets = {**WINDOWS, "teachers.openai.api_key_env": KEY_ENV, "teachers.openai.backoff_s": 0.01,
            "teachers.openai.max_concurrency": 2, "teachers.n_per_teacher": 2, "teachers.samples_in_report": 3}
    argv = ["--ds", DS.isoformat(), *overrides(**sets),
            "--set", f'teachers.specs=[builtin:rules, builtin:retrieval, "{openai}", builtin:reasoner]']
    result = teachers_generate.main(argv)

    teacher_ids = ["builtin:rules", "builtin:retrieval", f"openai:{MODEL}@{llm_server.url.split('//')[1]}"]
    assert result["teacher_ids"] == teacher_ids and result["skipped_specs"] == ["builtin:reasoner"]  # no model yet
    assert result["sessions"] == 4 and result["days"] == 2
    assert {p.split("/lake/")[1].split("/dt=")[0] for p in read} == {"features/sessions", "validated/kb_intents"}
    assert llm_server.requests[0][0]["authorization"] == f"Bearer {KEY}"

    rows = []
    for day in TRAIN:
        part = lake.partition("teachers", "candidates", day)
        assert lake.is_complete(part) and lake.marker(part)["fingerprint"]
        tbl = lake.read_partition(part, "candidates")
        assert tbl.schema == teachers_generate.candidates_schema()
        got = tbl.to_pylist()
        assert got == sorted(got, key=lambda r: (r["session_id"], r["teacher_id"], r["candidate_idx"]))
        rows += got
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["session_id"], r["teacher_id"])].append(r["latent_query"])
    assert by[(1, "builtin:rules")][0] == "Why is my order delayed?"
    assert "my item arrived damaged" in T.normalise(by[(2, "builtin:retrieval")][0])
    assert (3, "builtin:retrieval") not in by  # no text signal
    assert all(len(by[(s, teacher_ids[2])]) == 2 for s in (2, 3, 4))
    # session 1: the LLM's first answer repeats the rules teacher's (first in the list): dropped
    assert by[(1, teacher_ids[2])] == ["Why is my order late (option 1.1)?"]
    assert result["candidates"] == len(rows)
    assert result["duplicates_removed"] >= 1

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [exp] = [e for e in client.search_experiments() if e.name == "rgalign"]
    [run] = client.search_runs([exp.experiment_id], "tags.stage = 'teachers_generate'")
    m = run.data.metrics
    for t in ("builtin_rules", "builtin_retrieval", f"openai_{MODEL}_127.0.0.1_{llm_server.url.rsplit(':', 1)[1]}"):
        for key in ("candidates", "sessions_covered", "query_words_mean", "seconds"):
            assert f"{key}.{t}" in m, (key, t, sorted(m))
    assert m["sessions_covered.builtin_rules"] == 4 and m["sessions_covered.builtin_retrieval"] == 3
    assert "duplicates_removed" in m and "query_words_mean" in m
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "teacher_samples.md" in artifacts
    md = open(client.download_artifacts(run.info.run_id, "teacher_samples.md", str(tmp_path))).read()
    assert "Why is my order delayed?" in md and "builtin:reasoner" in md and "A regular customer" in md
    assert KEY not in json.dumps(run.data.params) and KEY not in json.dumps(run.data.tags) and KEY not in md

    # up to date: nothing is regenerated, the server is not called again
    n_requests = len(llm_server.requests)
    assert teachers_generate.main(argv)["skipped"] == 1
    assert len(llm_server.requests) == n_requests


def test_job_refuses_test_days_and_missing_inputs(tmp_path, overrides):
    from jobs import teachers_generate
    from rgalign_core.lake import MissingPartition
    from rgalign_core.stage import StageError

    lake = Lake(str(tmp_path / "lake"))
    build_lake(lake)
    base = ["--ds", DS.isoformat(), *overrides(**WINDOWS), "--set", "teachers.specs=[builtin:rules, builtin:retrieval]"]
    with pytest.raises(StageError, match="teachers.days='train\\+test'"):
        teachers_generate.main([*base, "--set", "teachers.days=train+test"])
    with pytest.raises(MissingPartition, match=r"features.sessions.*dt=2026-03-04"):
        teachers_generate.main([*base, "--set", "teachers.days=train+valid"])
    assert not (tmp_path / "lake" / "teachers").exists()  # nothing written before the inputs were checked


def test_job_resolves_the_current_reasoner(tmp_path):
    from jobs import teachers_generate
    from rgalign_core.config import load
    from rgalign_core.stage import Context

    cfg = load("teachers_generate", [f"lake.root={tmp_path / 'lake'}"])
    lake = Lake(cfg["lake"]["root"])
    ctx = Context(stage="teachers_generate", ds=DS, cfg=cfg, lake=lake, force=False, tracker=None)
    specs = ["builtin:rules", "builtin:reasoner"]
    assert teachers_generate.resolve_specs(ctx, specs) == (["builtin:rules"], None, ["builtin:reasoner"])
    model = lake.partition("models", "reasoner", DS, key="ds")
    with lake.write_partition(model, {"fingerprint": "m1"}) as tmp:
        (Path(tmp) / "config.json").write_text("{}")
    assert teachers_generate.resolve_specs(ctx, specs) == (specs, model, [])
    # a checkpoint given as reasoner.base_model is used when nothing was bootstrapped for the date
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    cfg2 = load("teachers_generate", [f"lake.root={tmp_path / 'lake2'}", f"reasoner.base_model={ckpt}"])
    ctx2 = Context(stage="teachers_generate", ds=DS, cfg=cfg2, lake=Lake(cfg2["lake"]["root"]), force=False, tracker=None)
    assert teachers_generate.resolve_specs(ctx2, specs) == (specs, str(ckpt), [])
    # ... and also when a bootstrapped reasoner of an earlier run is there: the config says which
    cfg3 = load("teachers_generate", [f"lake.root={tmp_path / 'lake'}", f"reasoner.base_model={ckpt}"])
    ctx3 = Context(stage="teachers_generate", ds=DS, cfg=cfg3, lake=lake, force=False, tracker=None)
    assert teachers_generate.resolve_specs(ctx3, specs) == (specs, str(ckpt), [])


def test_build_from_a_whole_stage_config():
    cfg = {"reasoner": {"max_new_tokens": 24}, "bootstrap": {"seed": 0}}
    a = T.build("builtin:retrieval", cfg, kb=kb_rows(), seed=4)
    b = T.build_teacher("builtin:retrieval", {"seed": 4}, kb=kb_rows())
    assert a.generate([DELAYED | {"last_chat_message": "refund pending"}], 2) == \
        b.generate([DELAYED | {"last_chat_message": "refund pending"}], 2)
    assert T.build("hf:/models/x", cfg).max_new_tokens == 24
    assert T.settings_from_config({"teachers": {"hf": {"max_new_tokens": 7}}, "reasoner": {"max_new_tokens": 24}})["hf"] \
        == {"max_new_tokens": 7}
