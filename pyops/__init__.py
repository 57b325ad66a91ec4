"""pyops: shell-first backups and maintenance for self-hosted apps."""

__version__ = "0.1.0"
