"""Lifecycle (ILM.1): expiration, noncurrent expiration and transitions driven by the committed
change logs, never by listing a bucket. ``rules`` checks ``[lifecycle]`` and says what is due
when, ``model`` fixes the stored schedule layout, ``schedule`` what each record does to it
(exactly once per log object), ``executor`` the re-checked actions, ``plan`` the dry run and the
status, ``consumer`` the leased loop. docs/lifecycle-plan.md."""
