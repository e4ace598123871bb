"""Teachers that write reasoning traces: a local Hugging Face model (see :mod:`.hf`)."""
