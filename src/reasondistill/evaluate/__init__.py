"""Evaluate models with the task's verifier (see :mod:`.accuracy`)."""
