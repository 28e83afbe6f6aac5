-- The dashboard's latency and TTFT percentiles read one row at an offset of these indexes,
-- instead of fetching and sorting every value of the window.
CREATE INDEX gov_spend_latency ON gov_spend (latency_s, ts);
CREATE INDEX gov_spend_ttft ON gov_spend (ttft_s, ts);
-- When a counter was last reserved or settled: a session's counter idle for a week is dropped
-- (one per agent conversation would pile up for good) and rebuilt from the spend log when the
-- session comes back. Rows from before this column read as long idle, which is safe for the same reason.
ALTER TABLE gov_counters ADD COLUMN used_at REAL NOT NULL DEFAULT 0;
