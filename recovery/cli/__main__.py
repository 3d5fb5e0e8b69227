"""``python -m safereplay.recovery.cli``: how worker processes are started."""

from safereplay.recovery.cli.app import main

main()
