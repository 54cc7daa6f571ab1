"""Each protocol of the papers written once, as functions the commands, the sweep stages and the benchmarks call.

- :mod:`~fewbits.protocols.codebook`: fine-tune FP32 -> quantize -> fine-tune the codebooks (P1);
- :mod:`~fewbits.protocols.qat`: STE training -> a second phase with a regularizer (P2);
- :mod:`~fewbits.protocols.mask`: a frozen base -> one mask and head per task (P3).

Each writes one record (``QuantizeFinetuneResult``, ``QATPhaseRecord``, ``MaskRecord``), the same whichever of
the command, the sweep stage or the benchmark ran it.
"""
