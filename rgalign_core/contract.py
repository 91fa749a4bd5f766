"""The raw-data contract: the tables a company provides, defined once.

Every raw table is Parquet under ``<raw_root>/<table>/dt=YYYY-MM-DD/``. Event tables hold the
events of that day; snapshot tables (``kb_intents``, ``users``) hold the full table as of that
day. ``docs/data_contract.md`` documents the same thing for people; this module is what the code
checks (``rgalign_core.validate``) and what the simulator writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# ---- enums -------------------------------------------------------------------------------------

INTENT_CATEGORIES = (
    "logistics",
    "returns_refunds",
    "payment",
    "order_changes",
    "account_security",
    "vouchers_promotions",
    "product_seller",
    "app_issues",
)
REGIONS = ("SG", "MY", "TH", "ID", "VN", "PH", "TW", "BR")
LANGUAGES = ("en", "ms", "th", "id", "vi", "zh", "pt")
VIP_TIERS = ("none", "silver", "gold", "platinum")
DEVICE_OS = ("android", "ios", "web")
ORDER_STATUSES = (
    "paid",
    "shipped",
    "delayed",
    "delivered",
    "lost",
    "cancelled",
    "return_requested",
    "refund_pending",
    "refunded",
)
BEHAVIOUR_EVENT_TYPES = (
    "page_view",          # text = item title viewed
    "search",             # text = free-text query
    "chat_message",       # text = message the user sent to a seller / agent chat
    "payment_failed",     # text = payment method, order_id set when known
    "voucher_claimed",    # text = voucher name
    "voucher_expiring",   # platform notice: a claimed voucher expires within 48 h
    "voucher_used",
    "login_new_device",
    "password_reset",
    "app_crash",          # text = screen where it crashed
)
ENTRY_POINTS = ("home_icon", "order_page", "help_center", "push_notification", "payment_page", "product_page")

ENUMS: dict[str, tuple[str, ...]] = {
    "category": INTENT_CATEGORIES,
    "region": REGIONS,
    "language": LANGUAGES,
    "vip_tier": VIP_TIERS,
    "device_os": DEVICE_OS,
    "status": ORDER_STATUSES,
    "event_type": BEHAVIOUR_EVENT_TYPES,
    "entry_point": ENTRY_POINTS,
}

TS = pa.timestamp("us")  # naive UTC everywhere


@dataclass(frozen=True)
class Table:
    """One raw table: its schema, what identifies a row, what each column must satisfy."""

    name: str
    schema: pa.Schema
    kind: str  # "event" (rows of that day) or "snapshot" (whole table as of that day)
    keys: tuple[str, ...]  # non-null, unique within a partition
    time_column: str | None = None  # event tables: must fall inside the partition's day
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # non-null besides the keys
    doc: str = ""


def _enums(*cols: str) -> dict[str, tuple[str, ...]]:
    return {c: ENUMS[c] for c in cols}


KB_INTENTS = Table(
    name="kb_intents",
    kind="snapshot",
    schema=pa.schema(
        [
            ("intent_id", pa.int32()),
            ("title", pa.string()),
            ("answer", pa.string()),
            ("category", pa.string()),
            ("created_date", pa.date32()),
            ("active", pa.bool_()),
        ]
    ),
    keys=("intent_id",),
    enums=_enums("category"),
    required=("title", "category", "created_date", "active"),
    doc="Knowledge-Base questions the chatbot can show; one row per intent as of the day.",
)

USERS = Table(
    name="users",
    kind="snapshot",
    schema=pa.schema(
        [
            ("user_id", pa.int64()),
            ("signup_date", pa.date32()),
            ("region", pa.string()),
            ("language", pa.string()),
            ("vip_tier", pa.string()),
            ("device_os", pa.string()),
        ]
    ),
    keys=("user_id",),
    enums=_enums("region", "language", "vip_tier", "device_os"),
    required=("signup_date", "region"),
    doc="User profiles as of the day.",
)

ORDERS = Table(
    name="orders",
    kind="event",
    schema=pa.schema(
        [
            ("event_id", pa.int64()),
            ("order_id", pa.int64()),
            ("user_id", pa.int64()),
            ("event_time", TS),
            ("status", pa.string()),
            ("item_title", pa.string()),
            ("amount", pa.float64()),
        ]
    ),
    keys=("event_id",),
    time_column="event_time",
    enums=_enums("status"),
    required=("order_id", "user_id", "event_time", "status"),
    doc="Order lifecycle events: one row each time an order changes status.",
)

BEHAVIOUR_EVENTS = Table(
    name="behaviour_events",
    kind="event",
    schema=pa.schema(
        [
            ("event_id", pa.int64()),
            ("user_id", pa.int64()),
            ("event_time", TS),
            ("event_type", pa.string()),
            ("text", pa.string()),
            ("order_id", pa.int64()),
        ]
    ),
    keys=("event_id",),
    time_column="event_time",
    enums=_enums("event_type"),
    required=("user_id", "event_time", "event_type"),
    doc="App behaviour: page views, searches (free text), chat messages, payment failures, "
    "voucher and account events, crashes.",
)

CHATBOT_SESSIONS = Table(
    name="chatbot_sessions",
    kind="event",
    schema=pa.schema(
        [
            ("session_id", pa.int64()),
            ("user_id", pa.int64()),
            ("session_time", TS),
            ("entry_point", pa.string()),
            ("region", pa.string()),
            ("language", pa.string()),
        ]
    ),
    keys=("session_id",),
    time_column="session_time",
    enums=_enums("entry_point", "region", "language"),
    required=("user_id", "session_time", "entry_point"),
    doc="One row per chatbot opening (the moment the zero-query recommendation is shown).",
)

INTENT_IMPRESSIONS = Table(
    name="intent_impressions",
    kind="event",
    schema=pa.schema(
        [
            ("session_id", pa.int64()),
            ("intent_id", pa.int32()),
            ("position", pa.int16()),
            ("clicked", pa.bool_()),
            ("impression_time", TS),
        ]
    ),
    keys=("session_id", "intent_id"),
    time_column="impression_time",
    required=("position", "clicked", "impression_time"),
    doc="The intents shown in a session (0-based position) and whether each was clicked.",
)

TABLES: dict[str, Table] = {
    t.name: t for t in (KB_INTENTS, USERS, ORDERS, BEHAVIOUR_EVENTS, CHATBOT_SESSIONS, INTENT_IMPRESSIONS)
}

# ---- the simulator's hidden truth (written under truth/, never read by feature extraction) ------

TRUTH_SESSION_NEEDS = pa.schema(
    [
        ("session_id", pa.int64()),
        ("need", pa.string()),  # the latent need's name, see rgalign_core.simulator.NEEDS
        ("need_source", pa.string()),  # "pending" (from the user's state) or "noise"
    ]
)
TRUTH_RELEVANCE = pa.schema(
    [
        ("session_id", pa.int64()),
        ("intent_id", pa.int32()),
        ("relevance", pa.int8()),  # graded 0..3 of the intent to the session's latent need
    ]
)
TRUTH_TABLES = {"session_needs": TRUTH_SESSION_NEEDS, "relevance": TRUTH_RELEVANCE}
