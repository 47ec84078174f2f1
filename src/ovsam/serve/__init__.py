"""HTTP API and web page for interactive segmentation (``ovsam serve``; needs the [serve] extra)."""
