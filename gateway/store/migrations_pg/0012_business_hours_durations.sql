-- The support metrics' durations on the business-hours clock (docs/stats.md): only the
-- time inside the account's business hours, float64 seconds appended like the wall-clock
-- samples beside them. Empty for an account without a schedule.
ALTER TABLE stat_durations ADD COLUMN frt_business BYTEA NOT NULL DEFAULT ''::bytea;
ALTER TABLE stat_durations ADD COLUMN response_business BYTEA NOT NULL DEFAULT ''::bytea;
ALTER TABLE stat_durations ADD COLUMN resolution_business BYTEA NOT NULL DEFAULT ''::bytea;
