"""The benchmark suite: every performance figure of the project, each beside the baseline it is
measured against in the same run (docs/benchmarks.md).

    python -m tools.bench {record,drain,rgw-put,lag,backup,journal,all} [--json] [--scale F] [--quick] [--lab DIR]

One module per figure group (``record``, ``drain``, ``rgw_put``, ``lag``, ``backup``,
``journal``); each has ``run(bench) -> list[Figure]``. ``common`` holds the lab, the sizing and
the figure type; ``peer`` the notification sink the RGW figures compare with; ``serve`` the
``rgw-changelog serve`` process they follow with. The larger figures keep their parts beside
them: ``backup_passes`` (the two backup tools, counted; also run alone by ``backup_standalone``)
and ``journal_ledger``, ``journal_logging``, ``journal_workload``, ``journal_lag``.
"""
