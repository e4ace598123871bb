"""reasondistill: distil step-by-step reasoning from a teacher language model into a small student.

Stages (each a CLI verb and a library call on a run directory): generate → curate → build →
train → evaluate → report. Start with ``reasondistill demo`` or :class:`reasondistill.pipeline.Pipeline`.
"""

__version__ = "0.1.0"
