"""``python -m changelog.cli``: the same as the ``rgw-changelog`` command."""

from changelog.cli import main

main()
