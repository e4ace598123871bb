"""Keeping secrets out of what reasondistill prints and saves.

Why: a config value comes back in error messages ("teacher.x: ... (got VALUE)") and the resolved
config is copied into the run directory, so a key pasted into a config (``api_key: sk-...``, or the
key itself given as ``api_key_env``) would be printed and saved. A value under a key whose name
says it may be a secret is never echoed, and ``api_key_env`` must look like the *name* of an
environment variable. Standard library only.

    secret_name("api_key")          # True: its value is not shown
    env_name_problem("sk-live-...") # a message that does not repeat the value; None for OPENAI_API_KEY
    command_line(["run", "c.yaml", "teacher.extra_body.api_key=sk-..."])  # "... teacher.extra_body.api_key=(not shown)"
"""

from __future__ import annotations

import re

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials",
                "auth", "authorization", "bearer", "cookie"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def secret_name(name: object) -> bool:
    """Whether a key named ``name`` may hold a secret: one of its words (split at ``_``, ``-``, ``.``
    and camelCase) is key, token, secret, password, ... (``api_key``, ``accessToken``; not ``max_tokens``)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    return any(w in SECRET_WORDS for w in words)


def env_name_problem(value: str) -> str | None:
    """Why ``value`` is no environment variable name (letters, digits and ``_``, not starting with a
    digit), without repeating it (it may be the key itself); None when it is one."""
    if ENV_NAME.fullmatch(value):
        return None
    return ("must be the name of an environment variable (letters, digits and _, e.g. OPENAI_API_KEY); the value "
            "given looks like a key, not a variable name: put the key in an environment variable (export "
            "OPENAI_API_KEY=...) and give the variable's name here")


def command_line(args: list[str]) -> str:
    """``args`` joined for a record (the run directory's lock), a ``key=value`` override whose key
    has a secret-looking part written without its value."""
    shown = []
    for a in args:
        key, eq, _ = a.partition("=")
        shown.append(f"{key}=(not shown)" if eq and any(secret_name(p) for p in key.split(".")) else a)
    return " ".join(shown)
