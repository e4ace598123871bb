"""Quantizing a trained student: post-training (PTQ), quantization-aware training (QAT) and
quantization-aware distillation (QAD), exported as real quantized weights and evaluated.

Why a package: one stage (``reasondistill quantize``) with its config (:mod:`.config`), the torchao
scheme it applies (:mod:`.scheme`), size and decode-speed measurements (:mod:`.speed`), the stage
itself (:mod:`.stage`) and its report section (:mod:`.report`). See docs/quantize.md.
"""
