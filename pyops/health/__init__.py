"""pyops health: checks of everything a restore at 3 a.m. depends on.

Kept light on purpose (config validation imports `settings` from here): the check
modules are imported by `registry` only when a health run needs them.
"""
