-- A key's cap on its requests in progress at once (null: none), and the same cap on all the keys
-- of a team together (the `team` tag keys carry). Keys from before this column have no cap.
ALTER TABLE gov_keys ADD COLUMN max_parallel_requests INTEGER;
CREATE TABLE gov_teams (
  team TEXT PRIMARY KEY,
  max_parallel_requests INTEGER,
  updated_at REAL NOT NULL
);
