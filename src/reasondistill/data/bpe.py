"""A small byte-level BPE tokenizer trained locally (``tokenizers``, no download): a student
vocabulary of another family than the bundled character-level teacher's.

Why: cross-tokenizer distillation (train/cross_tokenizer.py) needs a student whose tokens really
differ from the teacher's. Byte-level pre-tokenisation keeps runs of digits together, so BPE
learns multi-digit numbers as single tokens ("47" is one token, two for the teacher). Chat and
think tokens are the same strings as the teacher's, so prompts render alike.

    tok = train_bpe_tokenizer(texts, vocab_size=400)
    tok.save_pretrained("runs/bpe-tokenizer")        # then `students[i].tokenizer: runs/bpe-tokenizer`
"""

from __future__ import annotations

from typing import Iterable

from reasondistill.models import SPECIAL_TOKENS, with_chat_tokens


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 400, min_frequency: int = 2):
    """A PreTrainedTokenizerFast: byte-level BPE of ``vocab_size`` (special tokens included)
    trained on ``texts``; pad ``<|pad|>``, EOS ``<|end|>``, the character tokenizer's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return with_chat_tokens(tok)
