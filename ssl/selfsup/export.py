"""The public names of selfsup's artifacts in one place (kept for ``from selfsup.export import ...``).

Each lives in the module that does its one job; read those:

- :mod:`selfsup.safeload`: what a file is; reading checkpoints and weights without unpickling code;
- :mod:`selfsup.artifacts.card` / :mod:`selfsup.artifacts.validate`: the export card, ``config.json`` in timm's
  schema, and its checks;
- :mod:`selfsup.artifacts.exportdir`: writing and reading an export directory;
- :mod:`selfsup.artifacts.interop` / :mod:`selfsup.artifacts.torchvision`: TorchScript, ONNX, torchvision;
- :mod:`selfsup.artifacts.modelcard`: README.md; :mod:`selfsup.artifacts.load`: any path -> encoder;
- :mod:`selfsup.train.checkpoint`: rebuilding a run from its checkpoint (:func:`load_run`).
"""

from __future__ import annotations

from selfsup.artifacts.card import CARD, MODEL_CARD, WEIGHTS, card_info, make_card, method_reference, results_summary
from selfsup.artifacts.exportdir import (check_formats, export_formats, load_export, parse_formats, write_card,
                                         write_export)
from selfsup.artifacts.interop import (CHECK_BATCH, FEATURE_RTOL, FORMAT_FILES, FORMATS, ONNX_INPUT, ONNX_OPSET,
                                       ONNX_OUTPUT, TRACE_BATCH, check_features, example_input, onnx_installed,
                                       write_onnx, write_torchscript)
from selfsup.artifacts.load import export_encoder, load_encoder, load_encoder_and_card, to_torchvision
from selfsup.artifacts.modelcard import model_card_markdown, results_markdown
from selfsup.artifacts.torchvision import (TORCHVISION_RESNETS, torchvision_call, torchvision_from_encoder,
                                           torchvision_problem, write_torchvision)
from selfsup.artifacts.validate import card_error, read_card, validate_card
from selfsup.rundir import is_export_dir
from selfsup.safeload import (WHAT_LOADS, ExportError, LoadError, describe_bytes, describe_directory, describe_file,
                              file_sha256, find_checkpoint, load_checkpoint, read_weights)
from selfsup.statedict import StateMismatch, compare_state, describe_mismatch, file_in_chans, tensor_faults
from selfsup.train.checkpoint import check_selfsup_checkpoint, load_run

__all__ = [name for name in dir() if not name.startswith("_") and name != "annotations"]
