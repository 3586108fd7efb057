"""``python -m lacbed_felix ...``: the plugin's command group without the core's CLI."""

from .cli import felix_group

felix_group(prog_name="python -m lacbed_felix")
