"""Training data: turn curated traces into tokenised, masked, split examples, and batch them."""
