"""The environment a user's shell gives the program, for every subprocess the tests start.

This machine exports PYTHONUNBUFFERED=1 and PYTHONDONTWRITEBYTECODE=1 (and may export other
PYTHON* variables); users have none of them, and they change how the program behaves (an
unbuffered stdout hides a failed flush at exit). Tests run the program without them.
"""

import os


def user_environment(extra=None):
    """os.environ without PYTHON* variables and NO_COLOR, updated by `extra` (a value of
    None removes the variable)."""
    env = dict((name, value) for name, value in os.environ.items()
               if not name.startswith("PYTHON") and name != "NO_COLOR")
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
