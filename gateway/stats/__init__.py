"""Support metrics: the read side of the aggregates ``gateway/store/jobs/stats.py`` keeps
(``query.py``) and the ``omnirelay report`` table and chart (``report.py``)."""
