"""The stages recipes chain, and the registry :data:`STAGES` the sweep runs them from.

| stage | saved | what it does | papers |
|---|---|---|---|
| ``finetune`` | yes | train the full-precision model (P1's start, P2's teacher, P3's "weights") | P1 P2 P3 |
| ``quantize`` | no | codebook-quantize it (``fewbits.compress``): scheme, bits, groups; evaluate | P1 |
| ``finetune_quantized`` | no | train codebooks (x10 lr) and unquantized parameters; evaluate; artifact size | P1 |
| ``ste`` | yes | quantization-aware training with STE weights and activations (W/A bits) from the FP32 model | P2 |
| ``regularize`` | no | P2's second phase from the shared STE checkpoint: ste, msqe, fisher or kd | P2 |
| ``landscape`` | no | fitted-paraboloid Hessian trace of the loss surface (filter-normalized directions) | P2 |
| ``base`` | yes | the shared pretrained base for masks, quantized to ``bits`` (32: as is) | P3 |
| ``mask`` | no | learn the task's binary mask (and head) over the frozen base; evaluate; mask bytes | P3 |
| ``head`` | no | P3's control: train only the head over the frozen base; evaluate; LoRA size for scale | P3 |

Parameters and defaults are each class's ``defaults``; torch, transformers and the method modules are
imported only when a stage runs, so reading and dry-running recipes stays fast.
"""

from __future__ import annotations

from fewbits.experiments.base import Stage
from fewbits.experiments.stages_common import Finetune
from fewbits.experiments.stages_head import Head
from fewbits.experiments.stages_mask import Base, Mask
from fewbits.experiments.stages_qat import STE, Landscape, Regularize
from fewbits.experiments.stages_quant import FinetuneQuantized, Quantize

STAGES: dict[str, type[Stage]] = {
    cls.kind: cls for cls in (Finetune, Quantize, FinetuneQuantized, STE, Regularize, Landscape, Base, Mask, Head)
}
