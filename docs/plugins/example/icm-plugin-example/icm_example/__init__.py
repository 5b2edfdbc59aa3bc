"""An example icm task plugin: the ``edges`` task (see docs/plugins/tutorial.md)."""

__version__ = "0.1.0"
