"""Lifecycle (ILM.1): expiration, noncurrent expiration and transitions driven by the committed
change logs, never by listing a bucket. ``rules`` checks ``[lifecycle]`` and says what is due
when, ``model`` fixes the stored schedule layout, ``schedule`` what each record does to it
(exactly once per log object), ``executor`` the re-checked actions, ``plan`` the dry run and the
status, ``consumer`` the leased loop; ``bucket_rules`` reads the rules from the buckets' own S3
lifecycle configurations (``source = "bucket"``), ``uploads_gc`` aborts incomplete multipart
uploads, ``leftovers`` replication's abandoned ones at its sites. docs/lifecycle-plan.md."""
