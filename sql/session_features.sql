-- Point-in-time features of each chatbot session in the sample window, and the verbalised prompt
-- the reasoner reads. Only events STRICTLY BEFORE the session time and at most :lookback_days
-- old are used; max_event_time_used lets the job check that (leakage check).
--
-- Views (registered by jobs/extract_features.py over validated partitions):
--   sessions, orders, events (behaviour_events), users (daily snapshots)
-- Parameters: :first_day, :last_day (DATE strings), :lookback_days (INT)

WITH s AS (
  SELECT session_id, user_id, session_time, entry_point, region, language, dt,
         timestampadd(DAY, -:lookback_days, session_time) AS horizon
  FROM sessions
  WHERE dt BETWEEN CAST(:first_day AS DATE) AND CAST(:last_day AS DATE)
),

-- each order's latest status as of the session
order_status AS (
  SELECT s.session_id, o.order_id, o.status, o.event_time,
         (unix_micros(s.session_time) - unix_micros(o.event_time)) / 3.6e9 AS hours_ago,
         ROW_NUMBER() OVER (PARTITION BY s.session_id, o.order_id
                            ORDER BY o.event_time DESC, o.event_id DESC) AS rn
  FROM s JOIN orders o
    ON o.user_id = s.user_id AND o.event_time < s.session_time AND o.event_time >= s.horizon
),
order_feats AS (
  SELECT session_id,
    COUNT(*)                                                        AS n_orders,
    SUM(IF(status = 'paid', 1, 0))                                  AS n_paid,
    SUM(IF(status = 'shipped', 1, 0))                               AS n_shipped,
    SUM(IF(status = 'delayed', 1, 0))                               AS n_delayed,
    SUM(IF(status = 'delivered', 1, 0))                             AS n_delivered,
    SUM(IF(status = 'lost', 1, 0))                                  AS n_lost,
    SUM(IF(status = 'cancelled', 1, 0))                             AS n_cancelled,
    SUM(IF(status = 'return_requested', 1, 0))                      AS n_return_requested,
    SUM(IF(status = 'refund_pending', 1, 0))                        AS n_refund_pending,
    SUM(IF(status = 'refunded', 1, 0))                              AS n_refunded,
    MIN(IF(status = 'paid', hours_ago, NULL))                       AS h_since_paid,
    MIN(IF(status = 'shipped', hours_ago, NULL))                    AS h_since_shipped,
    MIN(IF(status = 'delayed', hours_ago, NULL))                    AS h_since_delayed,
    MIN(IF(status = 'delivered', hours_ago, NULL))                  AS h_since_delivered,
    MIN(IF(status = 'lost', hours_ago, NULL))                       AS h_since_lost,
    MIN(IF(status = 'cancelled', hours_ago, NULL))                  AS h_since_cancelled,
    MIN(IF(status = 'refunded', hours_ago, NULL))                   AS h_since_refunded,
    MAX(IF(status = 'refund_pending', hours_ago, NULL))             AS h_refund_pending,  -- longest wait
    MAX(event_time)                                                 AS max_order_time
  FROM order_status WHERE rn = 1
  GROUP BY session_id
),

-- behaviour events in the lookback, newest first per session and type
ev AS (
  SELECT s.session_id, e.event_type, e.text, e.event_time, e.event_id,
         (unix_micros(s.session_time) - unix_micros(e.event_time)) / 3.6e9 AS hours_ago,
         ROW_NUMBER() OVER (PARTITION BY s.session_id, e.event_type
                            ORDER BY e.event_time DESC, e.event_id DESC) AS rn
  FROM s JOIN events e
    ON e.user_id = s.user_id AND e.event_time < s.session_time AND e.event_time >= s.horizon
),
event_feats AS (
  SELECT session_id,
    SUM(IF(event_type = 'payment_failed' AND hours_ago < 24, 1, 0))  AS n_payment_failed_24h,
    MIN(IF(event_type = 'payment_failed', hours_ago, NULL))          AS h_since_payment_failed,
    MIN(IF(event_type = 'voucher_expiring', hours_ago, NULL))        AS h_since_voucher_expiring,
    MIN(IF(event_type = 'voucher_used', hours_ago, NULL))            AS h_since_voucher_used,
    MIN(IF(event_type = 'voucher_claimed', hours_ago, NULL))         AS h_since_voucher_claimed,
    MIN(IF(event_type = 'login_new_device', hours_ago, NULL))        AS h_since_login_new_device,
    MIN(IF(event_type = 'password_reset', hours_ago, NULL))          AS h_since_password_reset,
    MIN(IF(event_type = 'app_crash', hours_ago, NULL))               AS h_since_app_crash,
    SUM(IF(event_type = 'page_view' AND hours_ago < 24, 1, 0))       AS n_page_views_24h,
    SUM(IF(event_type = 'search' AND hours_ago < 24, 1, 0))          AS n_searches_24h,
    SUM(IF(event_type = 'chat_message', 1, 0))                       AS n_chat_messages,
    -- text signals, newest first (sort_array on (-time, -id) puts the newest first)
    array_join(transform(sort_array(collect_list(IF(event_type = 'search' AND rn <= 3,
        struct(-unix_micros(event_time) AS k, -event_id AS k2, text AS t), NULL))), x -> x.t), ' | ')
                                                                     AS recent_searches,
    MAX(IF(event_type = 'chat_message' AND rn = 1, text, NULL))      AS last_chat_message,
    array_join(transform(sort_array(collect_list(IF(event_type = 'page_view' AND rn <= 3,
        struct(-unix_micros(event_time) AS k, -event_id AS k2, text AS t), NULL))), x -> x.t), ' | ')
                                                                     AS recent_items,
    MAX(event_time)                                                  AS max_event_time
  FROM ev
  GROUP BY session_id
),

f AS (
  SELECT
    s.session_id, s.user_id, s.session_time, s.dt, s.entry_point, s.region, s.language,
    u.vip_tier, u.device_os,
    datediff(s.dt, u.signup_date)                     AS tenure_days,
    hour(s.session_time)                              AS hour_of_day,
    dayofweek(s.dt)                                   AS day_of_week,
    coalesce(o.n_orders, 0) AS n_orders, coalesce(o.n_paid, 0) AS n_paid,
    coalesce(o.n_shipped, 0) AS n_shipped, coalesce(o.n_delayed, 0) AS n_delayed,
    coalesce(o.n_delivered, 0) AS n_delivered, coalesce(o.n_lost, 0) AS n_lost,
    coalesce(o.n_cancelled, 0) AS n_cancelled, coalesce(o.n_return_requested, 0) AS n_return_requested,
    coalesce(o.n_refund_pending, 0) AS n_refund_pending, coalesce(o.n_refunded, 0) AS n_refunded,
    o.h_since_paid, o.h_since_shipped, o.h_since_delayed, o.h_since_delivered, o.h_since_lost,
    o.h_since_cancelled, o.h_since_refunded, o.h_refund_pending,
    coalesce(e.n_payment_failed_24h, 0) AS n_payment_failed_24h, e.h_since_payment_failed,
    e.h_since_voucher_expiring, e.h_since_voucher_used, e.h_since_voucher_claimed,
    e.h_since_login_new_device, e.h_since_password_reset, e.h_since_app_crash,
    coalesce(e.n_page_views_24h, 0) AS n_page_views_24h, coalesce(e.n_searches_24h, 0) AS n_searches_24h,
    coalesce(e.n_chat_messages, 0) AS n_chat_messages,
    nullif(e.recent_searches, '') AS recent_searches, e.last_chat_message, nullif(e.recent_items, '') AS recent_items,
    greatest(o.max_order_time, e.max_event_time)      AS max_event_time_used
  FROM s
  LEFT JOIN users u ON u.user_id = s.user_id AND u.dt = date_sub(s.dt, 1)   -- yesterday's snapshot
  LEFT JOIN order_feats o ON o.session_id = s.session_id
  LEFT JOIN event_feats e ON e.session_id = s.session_id
)

SELECT f.*,
  concat_ws(' ',
    concat('A ', CASE f.vip_tier WHEN 'none' THEN 'regular' ELSE concat(f.vip_tier, ' VIP') END,
           ' customer in ', f.region, ' (language ', f.language, '), member for ',
           coalesce(CAST(f.tenure_days AS STRING), 'an unknown number of'), ' days, opened the help chat from the ',
           replace(f.entry_point, '_', ' '), ' at ', lpad(CAST(f.hour_of_day AS STRING), 2, '0'), ':00.'),
    IF(f.n_orders = 0, 'No orders in the last week.', NULL),
    IF(f.n_paid > 0, concat(f.n_paid, ' order(s) paid and not yet shipped, latest ', CAST(floor(f.h_since_paid) AS INT), 'h ago.'), NULL),
    IF(f.n_shipped > 0, concat(f.n_shipped, ' order(s) in transit, shipped ', CAST(floor(f.h_since_shipped) AS INT), 'h ago.'), NULL),
    IF(f.n_delayed > 0, concat(f.n_delayed, ' delayed order(s), delay reported ', CAST(floor(f.h_since_delayed) AS INT), 'h ago.'), NULL),
    IF(f.n_lost > 0, concat(f.n_lost, ' order(s) marked lost ', CAST(floor(f.h_since_lost) AS INT), 'h ago.'), NULL),
    IF(f.n_delivered > 0, concat(f.n_delivered, ' order(s) delivered, latest ', CAST(floor(f.h_since_delivered) AS INT), 'h ago.'), NULL),
    IF(f.n_cancelled > 0, concat(f.n_cancelled, ' order(s) cancelled ', CAST(floor(f.h_since_cancelled) AS INT), 'h ago.'), NULL),
    IF(f.n_return_requested > 0, concat(f.n_return_requested, ' return request(s) open.'), NULL),
    IF(f.n_refund_pending > 0, concat('Refund pending for ', CAST(floor(f.h_refund_pending) AS INT), 'h.'), NULL),
    IF(f.h_since_payment_failed IS NOT NULL, concat('A payment failed ', CAST(floor(f.h_since_payment_failed) AS INT), 'h ago.'), NULL),
    IF(f.h_since_voucher_expiring IS NOT NULL
         AND (f.h_since_voucher_used IS NULL OR f.h_since_voucher_used > f.h_since_voucher_expiring),
       concat('A voucher expiry notice came ', CAST(floor(f.h_since_voucher_expiring) AS INT), 'h ago.'), NULL),
    IF(f.h_since_login_new_device IS NOT NULL, concat('Login from a new device ', CAST(floor(f.h_since_login_new_device) AS INT), 'h ago.'), NULL),
    IF(f.h_since_password_reset IS NOT NULL, concat('Password reset ', CAST(floor(f.h_since_password_reset) AS INT), 'h ago.'), NULL),
    IF(f.h_since_app_crash IS NOT NULL, concat('The app crashed ', CAST(floor(f.h_since_app_crash) AS INT), 'h ago.'), NULL),
    IF(f.recent_searches IS NOT NULL, concat('Recent searches: ', f.recent_searches, '.'), NULL),
    IF(f.last_chat_message IS NOT NULL, concat('Last chat message: "', f.last_chat_message, '".'), NULL),
    IF(f.recent_items IS NOT NULL, concat('Recently viewed: ', f.recent_items, '.'), NULL)
  ) AS prompt
FROM f
