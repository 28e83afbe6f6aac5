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
  rpm INTEGER,
  tpm INTEGER,
  max_request_nusd INTEGER,
  max_session_nusd INTEGER,
  metadata TEXT NOT NULL DEFAULT '{}',
  expires_at REAL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  revoked_at REAL
);

CREATE TABLE gov_key_secrets (
  hash TEXT PRIMARY KEY,
  key_id TEXT NOT NULL REFERENCES gov_keys(id),
  created_at REAL NOT NULL,
  valid_until REAL
);
CREATE INDEX gov_key_secrets_key ON gov_key_secrets (key_id);

CREATE TABLE gov_budgets (
  id TEXT PRIMARY KEY,
  scope TEXT NOT NULL,
  scope_id TEXT NOT NULL,
  period TEXT NOT NULL,
  limit_nusd INTEGER NOT NULL,
  soft_threshold REAL NOT NULL,
  created_at REAL NOT NULL,
  UNIQUE (scope, scope_id, period)
);

CREATE TABLE gov_counters (
  counter TEXT PRIMARY KEY,
  spent_nusd INTEGER NOT NULL DEFAULT 0,
  reserved_nusd INTEGER NOT NULL DEFAULT 0,
  partial INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE gov_reservations (
  id TEXT PRIMARY KEY,
  counters TEXT NOT NULL,
  amount_nusd INTEGER NOT NULL,
  partial INTEGER NOT NULL,
  created_at REAL NOT NULL
);

CREATE TABLE gov_spend (
  request_id TEXT PRIMARY KEY,
  ts REAL NOT NULL,
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
  cost_nusd INTEGER NOT NULL,
  predicted_nusd INTEGER,
  reserved_nusd INTEGER,
  input_tokens INTEGER,
  output_tokens INTEGER,
  latency_s REAL,
  ttft_s REAL,
  reason TEXT
);
CREATE INDEX gov_spend_ts ON gov_spend (ts);
CREATE INDEX gov_spend_key ON gov_spend (key_id, ts);

CREATE TABLE gov_alerts (
  dedupe TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  active INTEGER NOT NULL,
  message TEXT NOT NULL,
  fired_at REAL NOT NULL,
  fired_count INTEGER NOT NULL DEFAULT 1
);
