-- Governance store, version 1. Money is in nano-USD integers so sums are exact.
CREATE TABLE gov_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE gov_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  prefix TEXT NOT NULL,
  team TEXT,
  project TEXT,
  user_tag TEXT,
  allowed_models TEXT,
  allowed_profiles TEXT,
  rpm BIGINT,
  tpm BIGINT,
  max_request_nusd BIGINT,
  max_session_nusd BIGINT,
  metadata TEXT NOT NULL DEFAULT '{}',
  expires_at DOUBLE PRECISION,
  created_at DOUBLE PRECISION NOT NULL,
  updated_at DOUBLE PRECISION NOT NULL,
  revoked_at DOUBLE PRECISION
);

CREATE TABLE gov_key_secrets (
  hash TEXT PRIMARY KEY,
  key_id TEXT NOT NULL REFERENCES gov_keys(id),
  created_at DOUBLE PRECISION NOT NULL,
  valid_until DOUBLE PRECISION
);
CREATE INDEX gov_key_secrets_key ON gov_key_secrets (key_id);

CREATE TABLE gov_budgets (
  id TEXT PRIMARY KEY,
  scope TEXT NOT NULL,
  scope_id TEXT NOT NULL,
  period TEXT NOT NULL,
  limit_nusd BIGINT NOT NULL,
  soft_threshold DOUBLE PRECISION NOT NULL,
  created_at DOUBLE PRECISION NOT NULL,
  UNIQUE (scope, scope_id, period)
);

CREATE TABLE gov_counters (
  counter TEXT PRIMARY KEY,
  spent_nusd BIGINT NOT NULL DEFAULT 0,
  reserved_nusd BIGINT NOT NULL DEFAULT 0,
  partial BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE gov_reservations (
  id TEXT PRIMARY KEY,
  counters TEXT NOT NULL,
  amount_nusd BIGINT NOT NULL,
  partial BIGINT NOT NULL,
  created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE gov_spend (
  request_id TEXT PRIMARY KEY,
  ts DOUBLE PRECISION NOT NULL,
  day TEXT NOT NULL,
  key_id TEXT,
  key_name TEXT,
  team TEXT,
  project TEXT,
  user_tag TEXT,
  session_id TEXT,
  model TEXT,
  profile TEXT,
  status TEXT NOT NULL,
  cache_status TEXT,
  cost_nusd BIGINT NOT NULL,
  predicted_nusd BIGINT,
  reserved_nusd BIGINT,
  input_tokens BIGINT,
  output_tokens BIGINT,
  latency_s DOUBLE PRECISION,
  ttft_s DOUBLE PRECISION,
  reason TEXT
);
CREATE INDEX gov_spend_ts ON gov_spend (ts);
CREATE INDEX gov_spend_key ON gov_spend (key_id, ts);

CREATE TABLE gov_alerts (
  dedupe TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  active BIGINT NOT NULL,
  message TEXT NOT NULL,
  fired_at DOUBLE PRECISION NOT NULL,
  fired_count BIGINT NOT NULL DEFAULT 1
);
