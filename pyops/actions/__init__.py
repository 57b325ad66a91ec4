"""Actions: the work behind each command. They take an App, never import click,
never exit; errors are raised as pyops.errors."""
