"""Command-line interface of ovsam (``ovsam --help``)."""
