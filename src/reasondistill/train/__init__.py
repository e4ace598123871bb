"""Training the student: the config, the loop, checkpoints (see :mod:`reasondistill.train.sft`)."""
