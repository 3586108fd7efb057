"""Command-line interface of lacbed-refine (installed as the ``lacbed_refine_cli`` package)."""
