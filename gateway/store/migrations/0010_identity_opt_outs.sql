-- Opt-outs recorded on the identity (an SMS customer's STOP, issue 18): a JSON list of
-- {"channel", "account", "keyword", "at"}, one per account the identity opted out of;
-- NULL when there is none (the customer JSON then shows no "opt_outs"). It moves with the
-- identity on a merge and goes with it on an erasure. 0008, 0009 and 0011 are other
-- branches' migrations.
ALTER TABLE identities ADD COLUMN opt_outs TEXT;
