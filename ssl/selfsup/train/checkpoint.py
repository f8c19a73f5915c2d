"""Rebuilding a training run from its checkpoint: the checkpoint is read safely (selfsup.safeload), checked
to be one selfsup wrote, and its config rebuilds the LightningModule that the weights are loaded into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from selfsup.version import __version__
from selfsup.config import build_config
from selfsup.data import DataInfo
from selfsup.safeload import WHAT_LOADS, LoadError, find_checkpoint, first_names, load_checkpoint
from selfsup.statedict import compare_state, describe_mismatch, tensor_faults
from selfsup.train.module import CHECKPOINT_KEY, PretrainModule, module_from_checkpoint


def check_selfsup_checkpoint(ckpt: Any, path: Path) -> None:
    """Raise a LoadError naming what ``ckpt`` is when selfsup did not write it."""
    where = repr(str(path))
    if not isinstance(ckpt, dict):
        raise LoadError(f"{where} holds a {type(ckpt).__name__}, not a checkpoint; pass {WHAT_LOADS}")
    if CHECKPOINT_KEY in ckpt:
        return
    if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        raise LoadError(f"{where} is a plain state dict of {len(ckpt)} tensors (e.g. {first_names(ckpt)}), not a "
                        f"selfsup checkpoint: nothing in it says which architecture the weights belong to. Load it into "
                        f"its model with model.load_state_dict(torch.load(path, weights_only=True)), or pass "
                        f"{WHAT_LOADS}")
    what = "a Lightning checkpoint" if "state_dict" in ckpt else f"a dict with keys {first_names(ckpt, 5)}"
    raise LoadError(f"{where} is {what} not written by selfsup (it has no {CHECKPOINT_KEY!r} entry with the config "
                    f"that built the model); pass {WHAT_LOADS}")


def _checkpoint_mismatch(ckpt: dict[str, Any], path: Path, err: RuntimeError) -> str:
    """Why a selfsup checkpoint's weights do not fit the model its own config builds (code or timm drift)."""
    meta = ckpt[CHECKPOINT_KEY]
    head = f"the weights in {str(path)!r} do not fit the model its own config builds"
    try:
        d = dict(meta["data_info"])
        info = DataInfo(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})
        detail = describe_mismatch(compare_state(PretrainModule(build_config(meta["config"]), info).state_dict(),
                                                 ckpt["state_dict"]))
    except Exception:  # the summary is a courtesy; fall back to torch's first line
        detail = str(err).splitlines()[0]
    return (f"{head}: {detail}. It was written by selfsup {meta.get('version', '?')}, and this selfsup "
            f"{__version__} with timm {timm.__version__} builds a different model: load it with the versions "
            f"it was trained with")


def read_run(path: str | Path) -> tuple[PretrainModule, dict[str, Any]]:
    """The PretrainModule (eval mode) of a run directory or checkpoint, and the checkpoint dict.

    Raises:
        LoadError: nothing selfsup wrote is there, or its weights do not fit the model its config builds.
    """
    ckpt_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    check_selfsup_checkpoint(ckpt, ckpt_path)
    try:
        module = module_from_checkpoint(ckpt)
    except LoadError:
        raise
    except RuntimeError as err:
        if "Error(s) in loading state_dict" in str(err):
            raise LoadError(_checkpoint_mismatch(ckpt, ckpt_path, err)) from None
        raise LoadError(f"cannot rebuild the run from {str(ckpt_path)!r}: {err}") from None
    except (KeyError, ValueError) as err:
        raise LoadError(f"cannot rebuild the run from {str(ckpt_path)!r}: {err}") from None
    return module.eval(), ckpt


def load_run(path: str | Path) -> PretrainModule:
    """The PretrainModule of a run directory or checkpoint, in eval mode."""
    return read_run(path)[0]


def run_encoder(path: str | Path) -> tuple[nn.Module, PretrainModule, dict[str, Any]]:
    """The encoder a run exports (eval mode, ``selfsup_info`` attached), its module and the checkpoint dict.

    Raises:
        LoadError: as :func:`read_run`, or the encoder's weights hold NaN / infinite values.
    """
    module, ckpt = read_run(path)
    encoder = module.method.exported_encoder().eval()
    state = encoder.state_dict()
    fault = tensor_faults(state, state)
    if fault:
        raise LoadError(f"the encoder in {str(find_checkpoint(path))!r} is damaged: {fault}; load or resume from an "
                        f"earlier checkpoint of the run, or train it again")
    encoder.selfsup_info = module.info
    return encoder, module, ckpt
