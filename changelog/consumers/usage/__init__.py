"""Usage metrics (UTAPI.3): per-bucket objects, bytes and operations over time, counted exactly
once from the committed change logs. ``model`` fixes the stored layout (the state shard objects
``<index prefix>.<consumer>.<n:04d>``), ``apply`` what one record does to a bucket's counts,
``consumer`` the exactly-once protocol, ``query`` the documents of ``usage show`` and
``GET /_/usage``, ``prom`` the bounded per-bucket gauges. docs/design.md §13."""
