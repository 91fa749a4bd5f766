"""Render the column tables of ``docs/data_contract.md`` from ``rgalign_core.contract``.

The generated part of the document sits between the ``BEGIN``/``END`` markers below and is
rewritten by::

    python -m rgalign_core.contract_doc            # update docs/data_contract.md in place
    python -m rgalign_core.contract_doc --check    # exit 1 if the document is out of date

``tests/test_validate.py`` runs the check, so a contract change without a doc update fails.
Column meanings live here (the contract itself only holds what the code checks).
"""
from __future__ import annotations

import sys
from pathlib import Path

from rgalign_core import contract

DOC = Path(__file__).resolve().parent.parent / "docs" / "data_contract.md"
BEGIN = "<!-- BEGIN GENERATED: python -m rgalign_core.contract_doc -->"
END = "<!-- END GENERATED -->"

MEANING: dict[str, dict[str, str]] = {
    "kb_intents": {
        "intent_id": "Knowledge-Base intent (question) id, stable across days.",
        "title": "The question as shown to the user in the chatbot.",
        "answer": "The answer text behind the question (may be null).",
        "category": "Topic of the intent.",
        "created_date": "Day the intent was added to the Knowledge Base; it can be shown from that day on.",
        "active": "Whether the chatbot may show the intent as of the partition day.",
    },
    "users": {
        "user_id": "User id; the join key of every event table.",
        "signup_date": "Day the account was created.",
        "region": "Market the user belongs to.",
        "language": "App language (null = unknown).",
        "vip_tier": "Loyalty tier (null = unknown).",
        "device_os": "Main device platform (null = unknown).",
    },
    "orders": {
        "event_id": "Id of this status-change event, unique in the table.",
        "order_id": "The order that changed status.",
        "user_id": "Buyer.",
        "event_time": "When the order entered `status` (UTC).",
        "status": "The order's new status.",
        "item_title": "Title of the item bought (free text, may be null).",
        "amount": "Order amount in local currency (may be null).",
    },
    "behaviour_events": {
        "event_id": "Event id, unique in the table.",
        "user_id": "User who acted (or was notified).",
        "event_time": "When it happened (UTC).",
        "event_type": "What happened; see the enum (comments in contract.py say what `text` holds for each).",
        "text": "Free text: item title viewed, search query, chat message, payment method, voucher name, crashing screen; null for other types.",
        "order_id": "Related order when known (payment failures, chats about an order), else null.",
    },
    "chatbot_sessions": {
        "session_id": "Chatbot session id, unique in the table; the moment the recommendation is shown.",
        "user_id": "User who opened the chatbot.",
        "session_time": "When the chatbot was opened (UTC); features may only use events before it.",
        "entry_point": "Where in the app the chatbot was opened from.",
        "region": "User's market at session time (may be null).",
        "language": "App language at session time (may be null).",
    },
    "intent_impressions": {
        "session_id": "The session (in `chatbot_sessions` of the same day) the intent was shown in.",
        "intent_id": "The intent shown (in `kb_intents` of the same day).",
        "position": "0-based slot in the list shown (0 = top).",
        "clicked": "Whether the user clicked this intent.",
        "impression_time": "When the list was shown (UTC); normally the session's `session_time`.",
    },
}


def _constraint(spec: contract.Table, col: str) -> str:
    if col in spec.keys:
        return "key, not null" + (" (unique together)" if len(spec.keys) > 1 else " (unique)")
    if col in spec.required:
        return "not null"
    return "nullable"


def table_markdown(spec: contract.Table) -> str:
    missing = [f.name for f in spec.schema if f.name not in MEANING.get(spec.name, {})]
    if missing:
        raise KeyError(f"contract_doc.MEANING lacks {spec.name}.{missing}: describe every contract column")
    kind = (
        "event table: the rows of that day" if spec.kind == "event" else "snapshot table: the whole table as of that day"
    )
    lines = [
        f"### `{spec.name}`",
        "",
        f"{spec.doc}",
        "",
        f"- Kind: **{spec.kind}** ({kind}).",
        f"- Key: `{', '.join(spec.keys)}` (not null, unique within a partition).",
        (f"- Time column: `{spec.time_column}` must fall inside the partition's UTC day."
         if spec.time_column else "- No time column (snapshot)."),
        "",
        "| column | type | constraint | allowed values | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in spec.schema:
        enum = ", ".join(f"`{v}`" for v in spec.enums[f.name]) if f.name in spec.enums else ""
        lines.append(f"| `{f.name}` | `{f.type}` | {_constraint(spec, f.name)} | {enum} | {MEANING[spec.name][f.name]} |")
    return "\n".join(lines) + "\n"


def generated() -> str:
    return "\n".join(table_markdown(t) for t in contract.TABLES.values())


def render(doc: str) -> str:
    """``doc`` with the text between the markers replaced by the generated tables."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{DOC} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n\n{generated()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    current = DOC.read_text()
    new = render(current)
    if "--check" in argv:
        if new != current:
            print(f"{DOC} is out of date: run python -m rgalign_core.contract_doc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
