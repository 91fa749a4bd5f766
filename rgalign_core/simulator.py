"""The chatbot log simulator: a world with users, orders, problems, chatbot sessions and clicks.

Generative process (details and rationale in ``docs/simulator.md``):

1. Users get a profile (region, language, VIP tier, device, tenure) and hidden activity levels.
2. Orders follow lifecycles scheduled at purchase: paid -> shipped -> delivered, or delayed
   (then delivered or lost), or cancelled; after delivery some items are damaged / wrong / not
   received, leading to returns and refunds. Payment failures, vouchers, account events and app
   crashes arrive as Poisson streams.
3. Each of these opens a *condition*: a need the user has for a while (``[start, end)``), e.g.
   ``parcel_delayed`` from the delay until delivery. Some needs are visible to tabular features
   (an order status), some only weakly, some only through text the user types.
4. Help-seeking conditions trigger chatbot sessions; background sessions carry general (noise)
   needs. A session's hidden latent need is its trigger's need, or another need pending for
   the user at that moment.
5. Before a session the user often searches or messages a seller about the need (paraphrased,
   filled with the item's title); red-herring searches and plenty of browsing add noise.
6. A logging policy (popularity + a rule over the *discrete* state + entry point + noise)
   shows K intents, so exposure is biased and text-only needs are under-served. A cascade click
   model with position bias produces clicks; sessions without a click exist.

Everything is vectorised with numpy (one pass over the whole span, not a loop per user-day), so
the ``large`` scale produces tens of millions of events in minutes. Deterministic for a seed.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from rgalign_core import contract
from rgalign_core import sim_world as W

US_PER_MIN = 60_000_000
US_PER_H = 60 * US_PER_MIN
US_PER_DAY = 24 * US_PER_H
EPOCH = dt.date(1970, 1, 1)
NA = np.int64(-1)  # "no such event" in int64 time arrays

NEED_NAMES = list(W.NEEDS)
NEED_ID = {n: i for i, n in enumerate(NEED_NAMES)}
CATEGORIES = list(contract.INTENT_CATEGORIES)


@dataclasses.dataclass(frozen=True)
class SimParams:
    users: int
    seed: int
    end: dt.date  # last simulated (and written) day: the logical date
    days: int  # days written, ending at `end`
    warmup_days: int = 10
    origin: dt.date | None = None
    intents_shown: int = 5
    corrupt_rate: float = 0.0

    @property
    def first_day(self) -> dt.date:
        return self.end - dt.timedelta(days=self.days - 1)

    @property
    def start(self) -> dt.date:
        return self.origin or self.first_day - dt.timedelta(days=self.warmup_days)


def day_us(d: dt.date) -> int:
    return (d - EPOCH).days * US_PER_DAY


def relevance_matrix() -> np.ndarray:
    """REL[need, intent]: graded relevance 0..3 of every KB intent to every latent need."""
    rel = np.zeros((len(NEED_NAMES), len(W.KB)), dtype=np.int8)
    for i, (_, _, needs, _, _) in enumerate(W.KB):
        for n, g in needs.items():
            rel[NEED_ID[n], i] = g
    return rel


def intent_ids() -> np.ndarray:
    return np.arange(1, len(W.KB) + 1, dtype=np.int32)


class _Text:
    """Strings are stored once; tables hold int codes into this vocabulary (-1 = null)."""

    def __init__(self):
        self.vocab: list[str] = []
        self.index: dict[str, int] = {}

    def code(self, s: str) -> int:
        c = self.index.get(s)
        if c is None:
            c = self.index[s] = len(self.vocab)
            self.vocab.append(s)
        return c

    def codes(self, strings) -> np.ndarray:
        return np.fromiter((self.code(s) for s in strings), dtype=np.int64, count=len(strings))

    def array(self, codes: np.ndarray) -> pa.Array:
        dictionary = pa.array(self.vocab, type=pa.string())
        idx = pa.array(codes.astype(np.int32), mask=codes < 0)
        return pa.DictionaryArray.from_arrays(idx, dictionary).cast(pa.string())


def simulate(p: SimParams) -> tuple[dict[str, pa.Table], dict[str, pa.Table], dict]:
    """Run the world. Returns (raw tables, truth tables, report); every table has a ``dt`` column."""
    rng = np.random.default_rng(p.seed)
    T0, T1 = day_us(p.start), day_us(p.end) + US_PER_DAY
    span_days = (p.end - p.start).days + 1
    hour_p = np.array(W.HOURLY) / sum(W.HOURLY)
    text = _Text()
    item_codes = text.codes(W.ITEM_TITLES)

    def rand_times(n: int) -> np.ndarray:
        day = rng.integers(0, span_days, n)
        hour = rng.choice(24, n, p=hour_p)
        return T0 + day * US_PER_DAY + hour * US_PER_H + rng.integers(0, US_PER_H, n)

    def hours(lo: float, hi: float, n: int) -> np.ndarray:
        return (rng.uniform(lo, hi, n) * US_PER_H).astype(np.int64)

    # ---- 1. users ----------------------------------------------------------------------------
    U = p.users
    user_id = np.arange(1, U + 1, dtype=np.int64) + 100_000
    reg_names = list(W.REGIONS)
    reg_w = np.array([W.REGIONS[r][0] for r in reg_names])
    region = rng.choice(len(reg_names), U, p=reg_w / reg_w.sum())
    local_lang = np.array([W.REGIONS[r][1] for r in reg_names])[region]
    language = np.where(rng.random(U) < 0.75, local_lang, "en")
    vip = rng.choice(len(contract.VIP_TIERS), U, p=[0.6, 0.25, 0.12, 0.03])
    device = rng.choice(len(contract.DEVICE_OS), U, p=[0.6, 0.3, 0.1])
    signup = np.array([p.start - dt.timedelta(days=int(d)) for d in rng.integers(1, 1500, U)])
    activity = rng.lognormal(0.0, 0.6, U)
    order_rate = 0.07 * activity * np.array([1.0, 1.3, 1.7, 2.2])[vip]
    pay_fail_mult = np.array([W.REGIONS[r][2] for r in reg_names])[region]

    # ---- 2. orders and their lifecycles --------------------------------------------------------
    o_user = np.repeat(np.arange(U), rng.poisson(order_rate * span_days))
    O = len(o_user)
    o_paid = rand_times(O)
    o_item = rng.integers(0, len(W.ITEM_TITLES), O)
    o_amount = np.round(rng.lognormal(3.0, 0.8, O), 2)
    o_id = np.arange(1, O + 1, dtype=np.int64) + 5_000_000
    cancel = rng.random(O) < 0.05
    t_cancel = np.where(cancel, o_paid + hours(2, 30, O), NA)
    t_ship = np.where(~cancel, o_paid + hours(12, 60, O), NA)
    delay = ~cancel & (rng.random(O) < 0.12)
    t_delay = np.where(delay, t_ship + hours(24, 72, O), NA)
    lost = delay & (rng.random(O) < 0.25)
    t_lost = np.where(lost, t_delay + hours(24, 96, O), NA)
    t_deliv = np.where(delay & ~lost, t_delay + hours(24, 96, O), np.where(~cancel & ~delay, t_ship + hours(36, 120, O), NA))
    deliv = t_deliv != NA
    r = rng.random(O)
    damaged, wrong, not_recv = deliv & (r < 0.06), deliv & (r >= 0.06) & (r < 0.10), deliv & (r >= 0.10) & (r < 0.13)
    returned = ((damaged | wrong) & (rng.random(O) < 0.6)) | (deliv & ~damaged & ~wrong & (rng.random(O) < 0.03))
    t_return = np.where(returned, t_deliv + hours(12, 72, O), NA)
    t_refund_pending = np.where(
        returned, t_return + hours(12, 48, O),
        np.where(lost, t_lost + hours(6, 24, O), np.where(not_recv & (rng.random(O) < 0.5), t_deliv + hours(48, 96, O), NA)),
    )
    t_refunded = np.where(t_refund_pending != NA, t_refund_pending + hours(48, 200, O), NA)

    status_times = {
        "paid": o_paid, "shipped": t_ship, "delayed": t_delay, "delivered": t_deliv, "lost": t_lost,
        "cancelled": t_cancel, "return_requested": t_return, "refund_pending": t_refund_pending, "refunded": t_refunded,
    }
    ord_rows = [(np.nonzero(t != NA)[0], s, t) for s, t in status_times.items()]
    orders = {
        "order_idx": np.concatenate([ix for ix, _, _ in ord_rows]),
        "status": np.concatenate([np.full(len(ix), contract.ORDER_STATUSES.index(s)) for ix, s, _ in ord_rows]),
        "time": np.concatenate([t[ix] for ix, _, t in ord_rows]),
    }

    # ---- 3. conditions: (user, need, start, end, help-seeking probability) ---------------------
    conds: list[tuple[np.ndarray, str, np.ndarray, np.ndarray, float]] = []

    def add(mask, need, start, end, seek):
        ix = np.nonzero(mask)[0]
        conds.append((o_user[ix], need, start[ix], end[ix], seek))

    never = np.full(O, T1 + 30 * US_PER_DAY)
    add(~cancel, "track_parcel", t_ship, np.where(delay, t_delay, t_deliv), 0.12)
    add(delay, "parcel_delayed", t_delay, np.where(lost, t_lost, t_deliv), 0.6)
    add(lost, "parcel_lost", t_lost, np.where(t_refunded != NA, t_refunded, never), 0.8)
    add(not_recv, "delivered_not_received", t_deliv, t_deliv + 4 * US_PER_DAY, 0.85)
    wrong_start = t_deliv + hours(2, 24, O)
    add(wrong, "return_item", wrong_start, wrong_start + 4 * US_PER_DAY, 0.7)
    add(damaged, "damaged_item", wrong_start, wrong_start + 4 * US_PER_DAY, 0.7)
    add(t_refund_pending != NA, "refund_status", t_refund_pending, t_refunded, 0.35)
    pre_ship_end = np.where(cancel, t_cancel, t_ship)
    change_start = o_paid + hours(0.2, 2, O)
    r = rng.random(O)
    add((r < 0.08) & (change_start < pre_ship_end), "cancel_order", change_start, pre_ship_end, 0.8)
    add((r >= 0.08) & (r < 0.13) & (change_start < pre_ship_end), "change_address", change_start, pre_ship_end, 0.8)
    add(cancel, "order_cancelled", t_cancel, t_cancel + 2 * US_PER_DAY, 0.35)
    add(rng.random(O) < 0.015, "double_charged", o_paid, o_paid + 3 * US_PER_DAY, 0.8)
    seller_start = o_paid + hours(6, 72, O)
    seller_silent = rng.random(O) < 0.03
    add(seller_silent, "seller_unresponsive", seller_start, seller_start + 2 * US_PER_DAY, 0.6)

    # behaviour events as parallel arrays: user, time, type, text code, order_id (-1 none)
    ev: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]] = []

    def emit(users, times, etype, codes=None, order_ids=None):
        n = len(users)
        ev.append((
            users, times, contract.BEHAVIOUR_EVENT_TYPES.index(etype),
            codes if codes is not None else np.full(n, -1, np.int64),
            order_ids if order_ids is not None else np.full(n, -1, np.int64),
        ))

    def stream(rate_per_day, etype, need, dur_h, seek, text_choices=None):
        users = np.repeat(np.arange(U), rng.poisson(rate_per_day * span_days))
        t = rand_times(len(users))
        codes = None
        if text_choices:
            codes = text.codes(text_choices)[rng.integers(0, len(text_choices), len(users))]
        emit(users, t, etype, codes)
        if need:
            conds.append((users, need, t, t + int(dur_h * US_PER_H), seek))
        return users, t

    stream(0.02 * activity * pay_fail_mult, "payment_failed", "payment_failed", 24, 0.5, W.PAYMENT_METHODS)
    stream(np.full(U, 0.006), "login_new_device", "unrecognised_login", 24, 0.5)
    stream(np.full(U, 0.006), "password_reset", "reset_password", 12, 0.4)
    stream(0.015 * activity, "app_crash", "app_crash", 12, 0.3, W.CRASH_SCREENS)
    v_user, v_claim = stream(0.04 * activity, "voucher_claimed", None, 0, 0, W.VOUCHER_NAMES)
    v_expiry = v_claim + (rng.uniform(3, 10, len(v_user)) * US_PER_DAY).astype(np.int64)
    v_used = rng.random(len(v_user)) < 0.5
    v_use_t = v_claim + ((v_expiry - v_claim) * rng.random(len(v_user))).astype(np.int64)
    emit(v_user[v_used], v_use_t[v_used], "voucher_used")
    notice = v_expiry - 48 * US_PER_H
    emit(v_user[~v_used], notice[~v_used], "voucher_expiring")
    conds.append((v_user[~v_used], "voucher_expiring", notice[~v_used], v_expiry[~v_used], 0.25))
    bad_v = rng.random(len(v_user)) < 0.06
    bad_v_start = v_claim + hours(1, 48, len(v_user))
    conds.append((v_user[bad_v], "voucher_not_applied", bad_v_start[bad_v], bad_v_start[bad_v] + 24 * US_PER_H, 0.8))

    C_user = np.concatenate([c[0] for c in conds])
    C_need = np.concatenate([np.full(len(c[0]), NEED_ID[c[1]]) for c in conds])
    C_start = np.concatenate([c[2] for c in conds])
    C_end = np.concatenate([c[3] for c in conds])
    C_seek = np.concatenate([np.full(len(c[0]), c[4]) for c in conds])

    # ---- 4. chatbot sessions -----------------------------------------------------------------
    seeking = np.nonzero(rng.random(len(C_user)) < C_seek)[0]
    n_sess = 1 + rng.poisson(0.25, len(seeking))
    trig = np.repeat(seeking, n_sess)
    dur = np.maximum(C_end[trig] - C_start[trig], US_PER_H)
    wait = np.minimum(rng.exponential(np.minimum(dur / 3, 12 * US_PER_H)), dur * 0.99).astype(np.int64)
    s_user = C_user[trig]
    s_time = C_start[trig] + US_PER_MIN + wait
    s_need = C_need[trig].copy()
    s_source = np.zeros(len(trig), np.int8)  # 0 = pending (triggered), 1 = noise
    noise_users = np.repeat(np.arange(U), rng.poisson(0.006 * activity * span_days))
    noise_needs = np.array([NEED_ID[n] for n in W.NOISE_NEEDS])
    s_user = np.concatenate([s_user, noise_users])
    s_time = np.concatenate([s_time, rand_times(len(noise_users))])
    s_need = np.concatenate([s_need, noise_needs[rng.integers(0, len(noise_needs), len(noise_users))]])
    s_source = np.concatenate([s_source, np.ones(len(noise_users), np.int8)])
    keep = (s_time >= day_us(p.first_day)) & (s_time < T1)
    s_user, s_time, s_need, s_source = s_user[keep], s_time[keep], s_need[keep], s_source[keep]
    order = np.lexsort((s_user, s_time))
    s_user, s_time, s_need, s_source = s_user[order], s_time[order], s_need[order], s_source[order]
    S = len(s_user)

    # What is pending for each session's user at that moment (sessions x conditions, by user).
    sess = pd.DataFrame({"s": np.arange(S), "user": s_user, "t": s_time})
    cdf = pd.DataFrame({"user": C_user, "need": C_need, "start": C_start, "end": C_end})
    pend = sess.merge(cdf, on="user")
    pend = pend[(pend.start <= pend.t) & (pend.t < pend.end)][["s", "need"]].drop_duplicates()
    # The latent need: mostly the trigger; sometimes another need pending at that moment.
    pend = pend.assign(r=rng.random(len(pend))).sort_values(["s", "r"])
    alt = pend.groupby("s", sort=True).need.first()
    switch = np.zeros(S, bool)
    switch[alt.index.values] = rng.random(len(alt)) < np.where(s_source[alt.index.values] == 1, 0.5, 0.2)
    alt_need = np.full(S, -1)
    alt_need[alt.index.values] = alt.values
    s_need = np.where(switch, alt_need, s_need)
    s_source = np.where(switch, 0, s_source).astype(np.int8)
    # Discrete state a rule-based policy can see: pending needs of kind "discrete".
    discrete = np.array([W.NEEDS[n][1] == "discrete" for n in NEED_NAMES])
    obs = np.zeros((S, len(NEED_NAMES)), np.float32)
    pd_ = pend[discrete[pend.need.values]]
    obs[pd_.s.values, pd_.need.values] = 1.0

    need_cat = np.array([CATEGORIES.index(W.NEEDS[n][0]) for n in NEED_NAMES])[s_need]
    entry_names = list(contract.ENTRY_POINTS)
    entry_p = np.zeros((len(CATEGORIES), len(entry_names)))
    for c, dist in W.ENTRY_BY_CATEGORY.items():
        for e, w in dist.items():
            entry_p[CATEGORIES.index(c), entry_names.index(e)] = w
    entry_p = 0.85 * entry_p + 0.15 / len(entry_names)  # some users open it from anywhere
    cum = entry_p.cumsum(1)[need_cat]
    s_entry = (rng.random(S)[:, None] > cum).sum(1)

    # ---- 5. text the user typed before the session, plus noise ---------------------------------
    # The item a user talks about: their latest order before the session (or any item).
    last_item = pd.merge_asof(
        pd.DataFrame({"t": s_time, "user": s_user, "s": np.arange(S)}).sort_values("t"),
        pd.DataFrame({"t": o_paid, "user": o_user, "item": o_item}).sort_values("t"),
        on="t", by="user", direction="backward",
    ).sort_values("s")["item"].to_numpy()
    last_item = np.where(np.isnan(last_item), rng.integers(0, len(W.ITEM_TITLES), S), last_item).astype(int)
    kind = np.array([W.NEEDS[n][1] for n in NEED_NAMES])[s_need]
    p_text = np.select([kind == "text", kind == "weak", kind == "discrete"], [0.85, 0.6, 0.35], 0.5)
    for extra in (0, 1):
        has = rng.random(S) < (p_text if extra == 0 else p_text * 0.3)
        ix = np.nonzero(has)[0]
        is_chat = rng.random(len(ix)) < 0.4
        strings = []
        for j, chat in zip(ix, is_chat):
            phrases = W.PHRASES[NEED_NAMES[s_need[j]]]
            s = phrases[rng.integers(len(phrases))].replace("{item}", W.ITEM_TITLES[last_item[j]].lower())
            if chat:
                s = W.CHAT_PREFIXES[rng.integers(len(W.CHAT_PREFIXES))] + s + W.CHAT_SUFFIXES[rng.integers(len(W.CHAT_SUFFIXES))]
            strings.append(s)
        t = s_time[ix] - US_PER_MIN - rng.exponential(40 * US_PER_MIN, len(ix)).astype(np.int64)
        codes = text.codes(strings)
        emit(s_user[ix][is_chat], t[is_chat], "chat_message", codes[is_chat])
        emit(s_user[ix][~is_chat], t[~is_chat], "search", codes[~is_chat])
    # Red herrings: a search about some other need a few hours before.
    ix = np.nonzero(rng.random(S) < 0.25)[0]
    other = rng.integers(0, len(NEED_NAMES), len(ix))
    strings = [W.PHRASES[NEED_NAMES[n]][rng.integers(len(W.PHRASES[NEED_NAMES[n]]))].replace("{item}", W.ITEM_TITLES[rng.integers(len(W.ITEM_TITLES))].lower()) for n in other]
    emit(s_user[ix], s_time[ix] - US_PER_MIN - rng.exponential(3 * US_PER_H, len(ix)).astype(np.int64), "search", text.codes(strings))
    # Chats with silent sellers, complaints about damaged items, outside any session.
    for mask, need in ((seller_silent, "seller_unresponsive"), (damaged & (rng.random(O) < 0.5), "damaged_item")):
        ix = np.nonzero(mask)[0]
        ph = W.PHRASES[need]
        strings = [ph[rng.integers(len(ph))].replace("{item}", W.ITEM_TITLES[o_item[j]].lower()) for j in ix]
        t = (seller_start if need == "seller_unresponsive" else wrong_start)[ix] + hours(0, 12, len(ix))
        emit(o_user[ix], t, "chat_message", text.codes(strings), o_id[ix])
    # Browsing: product searches and page views (the bulk of the events).
    n_search = rng.poisson(0.6 * activity * span_days)
    su = np.repeat(np.arange(U), n_search)
    search_texts = [tpl.replace("{p}", prod.lower()) for tpl in W.PRODUCT_SEARCHES for prod in W.PRODUCTS]
    emit(su, rand_times(len(su)), "search", text.codes(search_texts)[rng.integers(0, len(search_texts), len(su))])
    pv = np.repeat(np.arange(U), rng.poisson(3.0 * activity * span_days))
    emit(pv, rand_times(len(pv)), "page_view", item_codes[rng.integers(0, len(item_codes), len(pv))])
    # Browsing the item before buying it.
    k = rng.integers(1, 4, O)
    bo = np.repeat(np.arange(O), k)
    emit(o_user[bo], o_paid[bo] - hours(0.1, 48, len(bo)), "page_view", item_codes[o_item[bo]])
    # Payment failures also tied to a purchase attempt right before some orders.
    pf = np.nonzero(rng.random(O) < 0.02 * pay_fail_mult[o_user])[0]
    emit(o_user[pf], o_paid[pf] - hours(0.05, 1, len(pf)), "payment_failed", text.codes(W.PAYMENT_METHODS)[rng.integers(0, 4, len(pf))], o_id[pf])

    # ---- 6. logging policy and clicks ----------------------------------------------------------
    REL = relevance_matrix()
    I = len(W.KB)
    K = p.intents_shown
    pop = rng.lognormal(0.0, 0.5, I)
    created_day = np.array([
        (p.end - dt.timedelta(days=c) if c is not None else p.start - dt.timedelta(days=int(rng.integers(30, 700))))
        for (_, _, _, c, _) in W.KB
    ])
    created_us = np.array([day_us(d) for d in created_day])
    active = np.array([a for (*_, a) in W.KB])
    intent_cat = np.array([CATEGORIES.index(c) for (_, c, _, _, _) in W.KB])
    entry_prior = np.log(entry_p[:, :].T[:, intent_cat] + 0.05)  # [entry, intent]
    s_day_us = (s_time // US_PER_DAY) * US_PER_DAY
    shown = np.empty((S, K), np.int64)
    CH = 200_000
    for a in range(0, S, CH):
        b = min(S, a + CH)
        rule = np.minimum(obs[a:b] @ (REL.astype(np.float32) / 3.0), 1.5)
        score = np.log(pop)[None, :] + 2.0 * rule + 0.6 * entry_prior[s_entry[a:b]]
        score += 0.8 * rng.gumbel(size=(b - a, I))
        is_new = (created_us[None, :] > s_day_us[a:b, None] - 7 * US_PER_DAY)
        score += 1.0 * is_new
        avail = active[None, :] & (created_us[None, :] <= s_day_us[a:b, None])
        score = np.where(avail, score, -np.inf)
        top = np.argpartition(-score, K, axis=1)[:, :K]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), axis=1), 1)
        shown[a:b] = top
    rel_shown = REL[s_need[:, None], shown]
    attract = np.array([0.02, 0.12, 0.4, 0.8])[rel_shown]
    clicked = np.zeros((S, K), bool)
    examining = rng.random(S) < 0.95
    for k in range(K):
        c = examining & (rng.random(S) < attract[:, k])
        clicked[:, k] = c
        examining = examining & ~c & (rng.random(S) < 0.85)

    # ---- 7. assemble tables ------------------------------------------------------------------
    session_id = np.arange(1, S + 1, dtype=np.int64) + 9_000_000
    iid = intent_ids()

    def dt_col(times: np.ndarray) -> pa.Array:
        return pa.array((times // US_PER_DAY).astype(np.int32), type=pa.int32()).cast(pa.date32())

    def ts(times: np.ndarray) -> pa.Array:
        return pa.array(times, type=pa.int64()).cast(contract.TS)

    def written(times: np.ndarray) -> np.ndarray:
        return (times >= day_us(p.first_day)) & (times < T1)

    # orders
    ow = written(orders["time"])
    oo = np.lexsort((orders["status"][ow], orders["time"][ow]))
    oi = orders["order_idx"][ow][oo]
    ot = orders["time"][ow][oo]
    orders_tbl = pa.table({
        "event_id": pa.array(np.arange(1, len(oi) + 1, dtype=np.int64) + 20_000_000),
        "order_id": pa.array(o_id[oi]),
        "user_id": pa.array(user_id[o_user[oi]]),
        "event_time": ts(ot),
        "status": pa.array(np.array(contract.ORDER_STATUSES)[orders["status"][ow][oo]].tolist() if len(oi) else [], type=pa.string()),
        "item_title": text.array(item_codes[o_item[oi]]),
        "amount": pa.array(o_amount[oi]),
        "dt": dt_col(ot),
    })
    # behaviour events
    e_user = np.concatenate([e[0] for e in ev])
    e_time = np.concatenate([e[1] for e in ev])
    e_type = np.concatenate([np.full(len(e[0]), e[2], np.int8) for e in ev])
    e_text = np.concatenate([e[3] for e in ev])
    e_order = np.concatenate([e[4] for e in ev])
    w = written(e_time)
    eo = np.lexsort((e_type[w], e_user[w], e_time[w]))
    e_user, e_time, e_type, e_text, e_order = e_user[w][eo], e_time[w][eo], e_type[w][eo], e_text[w][eo], e_order[w][eo]
    type_dict = pa.array(list(contract.BEHAVIOUR_EVENT_TYPES))
    events_tbl = pa.table({
        "event_id": pa.array(np.arange(1, len(e_user) + 1, dtype=np.int64) + 100_000_000),
        "user_id": pa.array(user_id[e_user]),
        "event_time": ts(e_time),
        "event_type": pa.DictionaryArray.from_arrays(pa.array(e_type.astype(np.int32)), type_dict).cast(pa.string()),
        "text": text.array(e_text),
        "order_id": pa.array(e_order, mask=e_order < 0),
        "dt": dt_col(e_time),
    })
    sessions_tbl = pa.table({
        "session_id": pa.array(session_id),
        "user_id": pa.array(user_id[s_user]),
        "session_time": ts(s_time),
        "entry_point": pa.array(np.array(entry_names)[s_entry].tolist(), type=pa.string()),
        "region": pa.array(np.array(reg_names)[region[s_user]].tolist(), type=pa.string()),
        "language": pa.array(language[s_user].tolist(), type=pa.string()),
        "dt": dt_col(s_time),
    })
    rep_t = np.repeat(s_time, K)
    impressions_tbl = pa.table({
        "session_id": pa.array(np.repeat(session_id, K)),
        "intent_id": pa.array(iid[shown.ravel()]),
        "position": pa.array(np.tile(np.arange(K, dtype=np.int16), S)),
        "clicked": pa.array(clicked.ravel()),
        "impression_time": ts(rep_t),
        "dt": dt_col(rep_t),
    })
    truth = {
        "session_needs": pa.table({
            "session_id": pa.array(session_id),
            "need": pa.array(np.array(NEED_NAMES)[s_need].tolist(), type=pa.string()),
            "need_source": pa.array(np.where(s_source == 0, "pending", "noise").tolist(), type=pa.string()),
            "dt": dt_col(s_time),
        }),
        "relevance": pa.table({
            "session_id": pa.array(np.repeat(session_id, K)),
            "intent_id": pa.array(iid[shown.ravel()]),
            "relevance": pa.array(rel_shown.ravel().astype(np.int8)),
            "dt": dt_col(rep_t),
        }),
    }

    # snapshots: one full copy per written day
    days = [p.first_day + dt.timedelta(days=i) for i in range(p.days)]
    kb_rows = []
    for d in days:
        for i, (title, cat, _, _, act) in enumerate(W.KB):
            if created_day[i] <= d:
                kb_rows.append((int(iid[i]), title, W.ANSWER_TEMPLATE.format(title=title, cat=cat.replace("_", " ")), cat, created_day[i], act, d))
    kb_tbl = pa.table(dict(zip(["intent_id", "title", "answer", "category", "created_date", "active", "dt"], map(list, zip(*kb_rows)))))
    kb_tbl = kb_tbl.cast(pa.schema(list(contract.KB_INTENTS.schema) + [("dt", pa.date32())]))
    users_one = {
        "user_id": pa.array(user_id),
        "signup_date": pa.array(signup.tolist(), type=pa.date32()),
        "region": pa.array(np.array(reg_names)[region].tolist(), type=pa.string()),
        "language": pa.array(language.tolist(), type=pa.string()),
        "vip_tier": pa.array(np.array(contract.VIP_TIERS)[vip].tolist(), type=pa.string()),
        "device_os": pa.array(np.array(contract.DEVICE_OS)[device].tolist(), type=pa.string()),
    }
    users_tbl = pa.concat_tables([pa.table({**users_one, "dt": pa.array([d] * U, type=pa.date32())}) for d in days])

    raw = {
        "kb_intents": kb_tbl, "users": users_tbl, "orders": orders_tbl, "behaviour_events": events_tbl,
        "chatbot_sessions": sessions_tbl, "intent_impressions": impressions_tbl,
    }
    injected = corrupt(raw, p.corrupt_rate, rng) if p.corrupt_rate > 0 else {}
    report = {
        "users": U, "orders": int(O), "sessions": int(S), "conditions": int(len(C_user)),
        "impressions": int(S * K), "clicks": int(clicked.sum()),
        "sessions_with_click": int(clicked.any(1).sum()), "behaviour_events": int(events_tbl.num_rows),
        "injected_bad_rows": injected,
        "first_day": p.first_day.isoformat(), "end": p.end.isoformat(), "origin": p.start.isoformat(),
    }
    return raw, truth, report


def corrupt(raw: dict[str, pa.Table], rate: float, rng: np.random.Generator) -> dict[str, dict[str, int]]:
    """Inject a few realistic bad rows (kept in their original ``dt``) so quarantine has work.

    Returns what was injected, by table and kind, for the report and the tests.
    """
    import pyarrow.compute as pc

    injected: dict[str, dict[str, int]] = {}

    def pick(tbl: pa.Table) -> np.ndarray:
        n = rng.binomial(tbl.num_rows, rate)
        return np.sort(rng.choice(tbl.num_rows, n, replace=False)) if n else np.array([], int)

    def set_rows(tbl, col, rows, value_fn):
        mask = np.zeros(tbl.num_rows, bool)
        mask[rows] = True
        column = tbl.column(col)
        new = pc.if_else(pa.array(mask), value_fn(column), column)
        return tbl.set_column(tbl.schema.get_field_index(col), col, new)

    def const(value, type_):
        return lambda c: pa.scalar(value, type=type_)

    plans = {
        "orders": [("null_key", "event_id", const(None, pa.int64())), ("unknown_enum", "status", const("teleported", pa.string()))],
        "behaviour_events": [("null_required", "user_id", const(None, pa.int64())), ("unknown_enum", "event_type", const("telepathy", pa.string()))],
        "chatbot_sessions": [
            ("outside_day", "session_time", lambda c: pc.add(c, pa.scalar(dt.timedelta(days=2), type=pa.duration("us")))),
            ("unknown_enum", "entry_point", const("smoke_signal", pa.string())),
        ],
        "intent_impressions": [("unknown_intent", "intent_id", const(9999, pa.int32()))],
    }
    for name, kinds in plans.items():
        tbl = raw[name]
        rows = pick(tbl)
        parts = np.array_split(rows, len(kinds))
        counts = {}
        for (kind, col, fn), part in zip(kinds, parts):
            if len(part):
                tbl = set_rows(tbl, col, part, fn)
                counts[kind] = int(len(part))
        if name == "intent_impressions":
            dup = pick(tbl)
            if len(dup):
                tbl = pa.concat_tables([tbl, tbl.take(pa.array(dup))])
                tbl = tbl.take(pc.sort_indices(tbl, [("dt", "ascending")]))
                counts["duplicate"] = int(len(dup))
        raw[name] = tbl
        injected[name] = counts
    return injected
