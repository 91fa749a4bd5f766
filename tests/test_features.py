"""Spark feature extraction on a tiny hand-built lake: golden values, leakage, idempotency."""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rgalign_core import contract
from rgalign_core.lake import Lake

DS = dt.date(2026, 3, 5)
RAW_DAYS = [dt.date(2026, 3, d) for d in range(1, 6)]  # 3 sample days + 2 lookback days
WINDOWS = {"windows.train_days": 1, "windows.valid_days": 1, "windows.test_days": 1, "windows.feature_lookback_days": 2}
T = dt.datetime


def _rows(table: str, rows: list[dict]) -> pa.Table:
    schema = contract.TABLES[table].schema
    return pa.Table.from_pylist(rows, schema=schema)


def build_fixture(lake: Lake) -> None:
    """Two users, two sessions. Session A (user 1, 2026-03-04 12:00) has history around it."""
    orders = [
        # order 10: paid before the lookback (ignored), shipped and delayed inside it -> delayed
        dict(event_id=1, order_id=10, user_id=1, event_time=T(2026, 3, 1, 10), status="paid", item_title="Wireless Earbuds", amount=20.0),
        dict(event_id=2, order_id=10, user_id=1, event_time=T(2026, 3, 2, 18), status="shipped", item_title="Wireless Earbuds", amount=20.0),
        dict(event_id=3, order_id=10, user_id=1, event_time=T(2026, 3, 4, 6), status="delayed", item_title="Wireless Earbuds", amount=20.0),
        # order 11: paid one hour before the session
        dict(event_id=4, order_id=11, user_id=1, event_time=T(2026, 3, 4, 11), status="paid", item_title="Yoga Mat", amount=9.5),
        # order 12: delivered exactly AT the session time -> must not be used
        dict(event_id=5, order_id=12, user_id=1, event_time=T(2026, 3, 4, 12), status="delivered", item_title="Desk Lamp", amount=15.0),
        # order 13: refund pending for 24 h
        dict(event_id=6, order_id=13, user_id=1, event_time=T(2026, 3, 3, 12), status="refund_pending", item_title="Dress", amount=30.0),
    ]
    events = [
        dict(event_id=101, user_id=1, event_time=T(2026, 3, 2, 11), event_type="search", text="old search", order_id=None),  # before lookback
        dict(event_id=102, user_id=1, event_time=T(2026, 3, 4, 2), event_type="payment_failed", text="credit card", order_id=None),
        dict(event_id=103, user_id=1, event_time=T(2026, 3, 4, 8), event_type="page_view", text="Wireless Earbuds", order_id=None),
        dict(event_id=104, user_id=1, event_time=T(2026, 3, 4, 9), event_type="search", text="cheap earbuds", order_id=None),
        dict(event_id=105, user_id=1, event_time=T(2026, 3, 4, 11, 30), event_type="search", text="where is my parcel", order_id=None),
        dict(event_id=106, user_id=1, event_time=T(2026, 3, 4, 11, 45), event_type="chat_message", text="hi, parcel delayed?", order_id=10),
        dict(event_id=107, user_id=1, event_time=T(2026, 3, 4, 12, 30), event_type="search", text="after the session", order_id=None),
    ]
    sessions = [
        dict(session_id=1001, user_id=1, session_time=T(2026, 3, 4, 12), entry_point="order_page", region="SG", language="en"),
        dict(session_id=1002, user_id=2, session_time=T(2026, 3, 5, 9), entry_point="home_icon", region="MY", language="ms"),
    ]
    impressions = [
        dict(session_id=1001, intent_id=1, position=0, clicked=False, impression_time=T(2026, 3, 4, 12)),
        dict(session_id=1001, intent_id=2, position=1, clicked=True, impression_time=T(2026, 3, 4, 12)),
        dict(session_id=1002, intent_id=1, position=0, clicked=False, impression_time=T(2026, 3, 5, 9)),
    ]
    kb = [
        dict(intent_id=1, title="Where is my parcel?", answer="...", category="logistics", created_date=dt.date(2025, 1, 1), active=True),
        dict(intent_id=2, title="Why is my order delayed?", answer="...", category="logistics", created_date=dt.date(2026, 3, 3), active=True),
    ]
    users = [dict(user_id=1, signup_date=dt.date(2025, 3, 5), region="SG", language="en", vip_tier="gold", device_os="ios")]
    new_user = dict(user_id=2, signup_date=dt.date(2026, 3, 4), region="MY", language="ms", vip_tier="none", device_os="android")

    def on(rows, col, day):
        return [r for r in rows if r[col].date() == day]

    for day in RAW_DAYS:
        parts = {
            "orders": on(orders, "event_time", day),
            "behaviour_events": on(events, "event_time", day),
            "chatbot_sessions": on(sessions, "session_time", day),
            "intent_impressions": on(impressions, "impression_time", day),
            "kb_intents": [r for r in kb if r["created_date"] <= day],
            "users": users + ([new_user] if day >= new_user["signup_date"] else []),
        }
        for table, rows in parts.items():
            lake.write_table(lake.partition("validated", table, day), _rows(table, rows), {"fingerprint": "fixture"})


@pytest.fixture
def fixture_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    build_fixture(lake)
    return lake


def run_extract(overrides, *extra):
    from jobs import extract_features

    sets = {k: v for k, v in WINDOWS.items()}
    return extract_features.main(["--ds", DS.isoformat(), *overrides(**sets), *extra])


def read(lake: Lake, table: str, day: dt.date) -> list[dict]:
    return lake.read_partition(lake.partition("features", table, day), table).to_pylist()


def test_golden_session_features(fixture_lake, overrides):
    result = run_extract(overrides)
    assert result["sessions"] == 2 and result["samples"] == 3
    [a] = read(fixture_lake, "sessions", dt.date(2026, 3, 4))
    expected = dict(
        session_id=1001, user_id=1, entry_point="order_page", region="SG", language="en", vip_tier="gold",
        device_os="ios", tenure_days=364, hour_of_day=12, day_of_week=4,
        n_orders=3, n_paid=1, n_shipped=0, n_delayed=1, n_delivered=0, n_lost=0, n_cancelled=0,
        n_return_requested=0, n_refund_pending=1, n_refunded=0,
        h_since_paid=1.0, h_since_shipped=None, h_since_delayed=6.0, h_since_delivered=None,
        h_refund_pending=24.0, n_payment_failed_24h=1, h_since_payment_failed=10.0,
        h_since_voucher_expiring=None, h_since_login_new_device=None, h_since_app_crash=None,
        n_page_views_24h=1, n_searches_24h=2, n_chat_messages=1,
        recent_searches="where is my parcel | cheap earbuds", last_chat_message="hi, parcel delayed?",
        recent_items="Wireless Earbuds",
    )
    assert {k: a[k] for k in expected} == expected
    assert a["prompt"] == (
        "A gold VIP customer in SG (language en), member for 364 days, opened the help chat from the "
        "order page at 12:00. 1 order(s) paid and not yet shipped, latest 1h ago. 1 delayed order(s), "
        "delay reported 6h ago. Refund pending for 24h. A payment failed 10h ago. "
        "Recent searches: where is my parcel | cheap earbuds. Last chat message: \"hi, parcel delayed?\". "
        "Recently viewed: Wireless Earbuds."
    )
    # user 2 signed up the day before: yesterday's snapshot knows them; no history at all
    [b] = read(fixture_lake, "sessions", dt.date(2026, 3, 5))
    assert (b["tenure_days"], b["n_orders"], b["recent_searches"], b["last_chat_message"]) == (1, 0, None, None)
    assert b["prompt"].endswith("No orders in the last week.")
    assert read(fixture_lake, "sessions", dt.date(2026, 3, 3)) == []  # no sessions that day: empty partition


def test_golden_samples(fixture_lake, overrides):
    run_extract(overrides)
    rows = read(fixture_lake, "samples", dt.date(2026, 3, 4))
    got = [(r["session_id"], r["intent_id"], r["position"], r["clicked"], r["intent_category"], r["intent_age_days"], r["n_delayed"])
           for r in rows]
    assert got == [(1001, 1, 0, 0, "logistics", 427, 1), (1001, 2, 1, 1, "logistics", 1, 1)]


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows_by_partition(lake: Lake) -> dict[str, list[dict]]:
    root = Path(lake.root) / "features"
    return {str(p.relative_to(root)): pq.read_table(p).to_pylist() for p in sorted(root.rglob("*.parquet"))}


def test_rerun_same_rows_and_no_other_partition_touched(fixture_lake, overrides):
    # A partition of a day outside the window, which the rerun must leave alone.
    other = fixture_lake.partition("features", "samples", dt.date(2026, 2, 1))
    fixture_lake.write_table(other, pa.table({"x": [1]}))
    before_other = _digests(Path(other))
    run_extract(overrides)
    first = _rows_by_partition(fixture_lake)
    assert run_extract(overrides)["skipped"] == 1  # up to date: nothing rewritten
    result = run_extract(overrides, "--force")
    assert result["sessions"] == 2
    assert _rows_by_partition(fixture_lake) == first
    assert _digests(Path(other)) == before_other
    assert not [p for p in (Path(fixture_lake.root) / "features").rglob("._*")]  # no temp leftovers


def test_missing_input_partition_names_it(fixture_lake, overrides):
    import shutil

    from rgalign_core.lake import MissingPartition

    shutil.rmtree(fixture_lake.partition("validated", "orders", dt.date(2026, 3, 2)))
    with pytest.raises(MissingPartition, match=r"orders.*dt=2026-03-02"):
        run_extract(overrides)
    assert not (Path(fixture_lake.root) / "features").exists()


def test_leakage_check_fails_the_task(tmp_path):
    from rgalign_core import spark as sparkx
    from rgalign_core.config import load
    from rgalign_core.stage import StageError
    from jobs.extract_features import check_no_leakage

    spark = sparkx.session(load("extract_features", ["spark.master=local[1]"]))
    ok = spark.createDataFrame([(1, T(2026, 3, 4, 12), T(2026, 3, 4, 11))], "session_id long, session_time timestamp, max_event_time_used timestamp")
    check_no_leakage(ok)
    leak = spark.createDataFrame([(7, T(2026, 3, 4, 12), T(2026, 3, 4, 12))], "session_id long, session_time timestamp, max_event_time_used timestamp")
    with pytest.raises(StageError, match=r"leakage: 1 session.*\[7\]"):
        check_no_leakage(leak)
