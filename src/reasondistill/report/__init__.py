"""Reports a person can open: ``report.md`` with a table and loss curves, ``report.json`` for machines."""
