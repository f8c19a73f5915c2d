"""Transfer beyond the frozen probe: fine-tuning and parameter-efficient tuning of an encoder with a linear
head (``selfsup eval TARGET --protocol NAME``).

- :mod:`.options`: :class:`TransferOptions` (protocol, schedule, LoRA / prompt / partial settings, low-shot
  fractions and seeds) with the papers' defaults;
- :mod:`.protocols`: freeze masks (finetune, partial, bitfit), the :class:`Classifier` and its optimiser groups;
- :mod:`.lora`: LoRA through Hugging Face ``peft`` (optional: ``pip install peft``);
- :mod:`.prompt`: visual prompt tuning of timm ViTs;
- :mod:`.train`: the Lightning training, model selection on a held-out split, :func:`run_protocol`;
- :mod:`.export`: the adapted classifier as a timm-loadable export, the adapter, the prompt tokens.
"""

from selfsup.transfer.options import PROTOCOLS, VIT_ONLY, TransferOptions
from selfsup.transfer.train import run_protocol

__all__ = ["PROTOCOLS", "VIT_ONLY", "TransferOptions", "run_protocol"]
