-- events_by_customer put one random B-tree page into every commit (customer ids are
-- random), for a lookup only erasure needs. Erasure already scanned events for the
-- conversation ids (there is no index on them); it now finds a customer's events by
-- customer id and conversation id in that same one scan.

DROP INDEX events_by_customer;
