"""Verify and curate teacher traces (see :mod:`.verdicts` and :mod:`.filters`)."""
