"""The HTTP API, /metrics and the web dashboard of ``safereplay serve``, over the dispatch layer."""
