-- Who made a reservation (host, process id and start time, open database: db.new_owner()): a
-- gateway starting on a SQLite ledger releases only the reservations of processes that have
-- ended, not those of another gateway still running on the same file. Rows from before this
-- column have no owner and are left to the stale-reservation sweep.
ALTER TABLE gov_reservations ADD COLUMN owner TEXT;
