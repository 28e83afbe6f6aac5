-- A key's cap on its requests in progress at once (null: none), and the same cap on all the keys
-- of a team together (the `team` tag keys carry). Keys from before this column have no cap.
ALTER TABLE gov_keys ADD COLUMN max_parallel_requests BIGINT;
CREATE TABLE gov_teams (
  team TEXT PRIMARY KEY,
  max_parallel_requests BIGINT,
  updated_at DOUBLE PRECISION NOT NULL
);
