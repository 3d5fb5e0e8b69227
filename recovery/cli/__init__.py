"""The ``safereplay`` command line and the demo: the outermost layer, imported by nothing."""
