"""pyops health: checks of everything a restore at 3 a.m. depends on.

The check modules are imported by `registry` only when a health run needs them; the
[health] rules live with the other config rules (pyops.config_rules).
"""
