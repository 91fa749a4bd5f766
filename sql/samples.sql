-- Training samples: one row per (session, shown intent) with its position and click, joined to
-- the session's point-in-time features and the intent's attributes as of the session's day.
--
-- Views: impressions (intent_impressions), kb (kb_intents daily snapshots),
--        session_features (the output of session_features.sql)

SELECT
  i.session_id,
  i.intent_id,
  CAST(i.position AS INT)                      AS position,
  CAST(i.clicked AS INT)                       AS clicked,
  k.category                                   AS intent_category,
  k.title                                      AS intent_title,
  datediff(f.dt, k.created_date)               AS intent_age_days,
  f.* EXCEPT (session_id, prompt, max_event_time_used)
FROM impressions i
JOIN session_features f ON f.session_id = i.session_id
JOIN kb k ON k.intent_id = i.intent_id AND k.dt = f.dt
