-- A session ceiling's counter is rebuilt from the spend log (Redis dropped it, or it is the
-- session's first request): without this index that sum read every row of the key's history.
CREATE INDEX gov_spend_session ON gov_spend (key_id, session_id, ts);
