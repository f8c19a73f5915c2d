"""An export directory edited or damaged by hand: every fault in config.json or model.safetensors is a
one-line LoadError naming the file, the field, its value and the fix, from selfsup.load_encoder and
from `selfsup eval EXPORT` (exit 2), before any forward pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import selfsup
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import DataInfo
from selfsup.encoders import create_encoder
from selfsup.export import LoadError, load_encoder_and_card, make_card, write_export

from conftest import ROOT

TINY = {"channels": [8, 16, 32, 64]}
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A valid export of a tiny 1-channel resnet18 (16x16, mean 0.5, std 0.25), written once."""
    torch.manual_seed(0)
    enc = create_encoder("resnet18", 1, TINY).eval()
    cfg = load_config(None, ["method.name=simclr", "data.name=digits", "data.image_size=16", "encoder.name=resnet18",
                             f"encoder.kwargs={json.dumps(TINY)}"])
    card = make_card(cfg, DataInfo(1, 16, 10, (0.5,), (0.25,), 256), enc, trained_steps=4)
    return write_export(enc, card, tmp_path_factory.mktemp("pristine") / "export")


# Where each field of the card sits in timm's schema (selfsup >= issue 15); the others sit under "selfsup".
TIMM_PATHS = {"architecture": ("architecture",), "num_features": ("num_features",), "global_pool": ("global_pool",),
              "in_chans": ("model_args", "in_chans"), "kwargs": ("model_args",),
              **{k: ("pretrained_cfg", k) for k in ("input_size", "mean", "std", "crop_pct", "interpolation", "license")}}


def _timm_schema(out: Path) -> bool:
    return "pretrained_cfg" in json.loads((out / "config.json").read_text())


def _keys(out: Path, field: str) -> tuple[str, ...]:
    """The keys leading to ``field`` in the card file of ``out``: timm's schema or the flat card of format 1."""
    return TIMM_PATHS.get(field, ("selfsup", field)) if _timm_schema(out) else (field,)


def _path(out: Path, field: str) -> str:
    """``field`` as the card file of ``out`` spells it (what error messages name)."""
    return ".".join(_keys(out, field))


def _to_flat(raw: dict) -> dict:
    """The flat card selfsup wrote before timm's schema (format 1), from a card in timm's schema; written here
    from the two layouts, not with selfsup's own conversion."""
    args = dict(raw["model_args"])
    flat = {"architecture": raw["architecture"], "kwargs": args, "in_chans": args.pop("in_chans"),
            "num_features": raw["num_features"], **{k: raw["pretrained_cfg"][k] for k in ("input_size", "mean", "std")}}
    flat.update({k: v for k, v in raw["selfsup"].items() if k != "format_version"})
    return flat


@pytest.fixture(params=["timm", "flat"])
def export(pristine, tmp_path, request) -> Path:
    """A copy of the pristine export for one test to damage: as written (timm's schema), or with the flat
    config.json of exports written before it."""
    out = Path(shutil.copytree(pristine, tmp_path / "export"))
    if request.param == "flat":
        raw = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps(_to_flat(raw), indent=2))
    return out


def _edit(out: Path, **changes) -> None:
    """Set (value) or delete (``...``) fields of the card, as a hand edit would (``kwargs`` in timm's schema:
    ``model_args`` less ``in_chans``)."""
    card = json.loads((out / "config.json").read_text())
    for k, v in changes.items():
        *parents, last = _keys(out, k)
        if k == "kwargs" and parents == [] and last == "model_args" and isinstance(v, dict):
            v = {"in_chans": card["pretrained_cfg"]["input_size"][0], **v}  # model_args may hold no object now
        node = card
        for key in parents:
            node = node[key]
        node.pop(last) if v is ... else node.__setitem__(last, v)
    (out / "config.json").write_text(json.dumps(card, indent=2))


def _load_error(path: Path) -> str:
    with pytest.raises(LoadError) as err:
        selfsup.load_encoder(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def _cli_error(out: Path, tmp_path: Path, capsys) -> str:
    """`selfsup eval EXPORT` exits 2 with one line on stderr; returns what follows 'error: '."""
    assert main(["eval", str(out), "--out", str(tmp_path / "ev")]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("selfsup eval: error: ")
    return captured.err[len("selfsup eval: error: "):].rstrip("\n")


REEXPORT = "or export the run again with `selfsup export RUN_DIR "

# field, value written into config.json, how the message shows it, what the message says is wrong
FIELD_FAULTS = [
    ("architecture", 18, "18", "it must be the name of the timm model the weights were trained with"),
    ("architecture", "", '""', "it must be the name of the timm model"),
    ("architecture", "resnet1800", '"resnet1800"', "timm has no model of that name (close names: resnet18"),
    ("in_chans", 0, "0", "it must be a positive integer: the images' channel count"),
    ("in_chans", -1, "-1", "it must be a positive integer"),
    ("in_chans", 1.0, "1.0", "it must be a positive integer"),
    ("in_chans", True, "true", "it must be a positive integer"),
    ("in_chans", "1", '"1"', "it must be a positive integer"),
    ("input_size", [1, -16, 16], "[1, -16, 16]", "it must be [C, H, W], three positive integers"),
    ("input_size", [1, 0, 0], "[1, 0, 0]", "it must be [C, H, W], three positive integers"),
    ("input_size", [1, 16], "[1, 16]", "it must be [C, H, W]"),
    ("input_size", [1, 16.5, 16], "[1, 16.5, 16]", "it must be [C, H, W]"),
    ("input_size", 16, "16", "it must be [C, H, W]"),
    ("input_size", [3, 16, 16], "[3, 16, 16]", 'its channel count C must equal "in_chans" (1)'),
    ("input_size", [1, 16, 32], "[1, 16, 32]", "H and W must be equal (selfsup resizes images to squares)"),
    ("mean", 0.5, "0.5", "it must be a list of finite numbers, one per input channel"),
    ("mean", [], "[]", "it must be a list of finite numbers"),
    ("mean", ["0.5"], '["0.5"]', "it must be a list of finite numbers"),
    ("mean", [float("nan")], "[NaN]", "it must be a list of finite numbers"),
    ("mean", [0.5, 0.5], "[0.5, 0.5]", 'it must hold one value per input channel: "in_chans" is 1'),
    ("std", 0, "0", "it must be a list of finite numbers > 0, one per input channel (the images are divided by it)"),
    ("std", [0], "[0]", "it must be a list of finite numbers > 0"),
    ("std", [-0.25], "[-0.25]", "it must be a list of finite numbers > 0"),
    ("std", [float("inf")], "[Infinity]", "it must be a list of finite numbers > 0"),
    ("std", [True], "[true]", "it must be a list of finite numbers > 0"),
    ("std", [0.25, 0.25, 0.25], "[0.25, 0.25, 0.25]", 'it must hold one value per input channel: "in_chans" is 1'),
    ("kwargs", "abc", '"abc"', "it must be a JSON object of timm.create_model keyword arguments ({} for none)"),
    ("kwargs", [], "[]", "it must be a JSON object of timm.create_model keyword arguments"),
    ("kwargs", 7, "7", "it must be a JSON object"),
    ("kwargs", {**TINY, "in_chans": 3}, '{"channels": [8, 16, 32, 64], "in_chans": 3}',
     "it sets in_chans, which selfsup passes to timm itself"),  # flat format only: model_args holds in_chans
    ("kwargs", {**TINY, "num_classes": 10}, '{"channels": [8, 16, 32, 64], "num_classes": 10}',
     "it sets num_classes, which selfsup passes to timm itself"),
    ("kwargs", {**TINY, "not_an_option": 1}, '{"channels": [8, 16, 32, 64], "not_an_option": 1}',
     "timm cannot build 'resnet18' with them (TypeError: ResNet.__init__() got an unexpected keyword argument "
     "'not_an_option')"),
    ("kwargs", {**TINY, "global_pool": "nope"}, '{"channels": [8, 16, 32, 64], "global_pool": "nope"}',
     "timm cannot build 'resnet18' with them (AssertionError: Invalid pool type: nope)"),
    ("kwargs", {"act_layer": "nope"}, '{"act_layer": "nope"}', "timm cannot build 'resnet18' with them (KeyError: 'nope')"),
    ("num_features", 0, "0", "it must be a positive integer: the width of the encoder's features"),
    ("num_features", "64", '"64"', "it must be a positive integer"),
    ("num_features", 32, "32", "the encoder it describes (whose tensors the weights fit) gives 64 features"),
    ("num_classes_seen", -1, "-1", "it must be an integer >= 0: the classes of the training data"),
    ("num_classes_seen", 2.5, "2.5", "it must be an integer >= 0"),
    ("trained_steps", -3, "-3", "it must be an integer >= 0 or null"),
    ("train_images", "256", '"256"', "it must be an integer >= 0 or null"),
    ("num_params", 1.5, "1.5", "it must be an integer >= 0 or null"),
    # epochs trained may be a share of one (a run stopped by trainer.max_steps), never negative or text
    ("trained_epochs", -0.5, "-0.5", "it must be a number >= 0 (epochs trained; a cut-short epoch as its share) or null"),
    ("trained_epochs", "1", '"1"', "it must be a number >= 0"),
    ("training_config", "digits", '"digits"', "it must be a JSON object"),
    ("method_config", [], "[]", "it must be a JSON object"),
    ("results", [1], "[1]", "it must be a JSON object"),
    ("exports", "none", '"none"', "it must be a JSON object"),
    ("versions", 1, "1", "it must be a JSON object"),
    ("method", 5, "5", "it must be a string"),
    ("weights_sha256", "abc", '"abc"', "it must be the SHA-256 of model.safetensors (64 lowercase hex digits)"),
    ("global_pool", "max", '"max"', "the encoder it describes pools with 'avg'"),
    ("global_pool", 3, "3", "it must be a string"),
    ("license", "", '""', 'it must be the licence\'s identifier, e.g. "apache-2.0" (a non-empty string)'),
    ("crop_pct", 0, "0", "it must be 1.0: the encoder was trained and evaluated on whole images"),
]


@pytest.mark.parametrize("field,value,shown,problem", FIELD_FAULTS,
                         ids=[f"{f}={s}" for f, _, s, _ in FIELD_FAULTS])
def test_every_card_field_fault_is_one_line_naming_file_field_value_and_fix(export, tmp_path, capsys, field, value,
                                                                            shown, problem):
    if _timm_schema(export) and "in_chans" in str(value):
        value, shown, problem = {**TINY, "pretrained": True}, shown.replace('"in_chans": 3', '"pretrained": true'), \
            "it sets pretrained, which selfsup passes to timm itself"  # timm's model_args hold in_chans by right
    problem = problem.replace('"in_chans"', f'"{_path(export, "in_chans")}"')  # the messages name it as the file does
    _edit(export, **{field: value})
    card = export / "config.json"
    msg = _load_error(export)
    fix = ('set "num_features": 64 in that file' if problem.endswith("gives 64 features")
           else "set \"global_pool\": 'avg' in that file" if "pools with" in problem
           else f'correct "{_path(export, field)}" in that file, {REEXPORT}{export}`')
    assert msg.startswith(f'{str(card)!r}: "{_path(export, field)}" is {shown}, but {problem}'), msg
    assert msg.endswith(fix), msg
    assert _cli_error(export, tmp_path, capsys) == msg  # the CLI prints the same line and exits 2


def test_issue_std_zero_negative_size_and_list_kwargs(export):
    """The three hand edits of the issue: each used to load silently or raise a raw ValueError."""
    card = export / "config.json"
    std, size, kwargs = (_path(export, f) for f in ("std", "input_size", "kwargs"))
    _edit(export, std=0)
    assert _load_error(export).startswith(f'{str(card)!r}: "{std}" is 0, but it must be a list of finite numbers > 0')
    _edit(export, std=[0.25], input_size=[1, -16, 16])
    assert _load_error(export).startswith(f'{str(card)!r}: "{size}" is [1, -16, 16], but it must be [C, H, W]')
    _edit(export, input_size=[1, 16, 16], kwargs=[["channels", [8, 16, 32, 64]]])
    assert _load_error(export).startswith(f'{str(card)!r}: "{kwargs}" is [["channels", [8, 16, 32, 64]]], but it '
                                          f'must be a JSON object')
    _edit(export, kwargs=TINY)  # the card restored: the export loads again
    assert selfsup.load_encoder(export).selfsup_info == DataInfo(1, 16, 10, (0.5,), (0.25,))


def test_cli_eval_of_a_hand_edited_export_prints_one_line(export, tmp_path):
    """The CLI in its own process (every other fault is checked through cli.main in-process): exit 2, one
    line on stderr, no traceback, nothing written."""
    _edit(export, std=0)
    res = subprocess.run([sys.executable, "-m", "selfsup.cli", "eval", str(export), "--out", str(tmp_path / "ev")],
                         env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"selfsup eval: error: {str(export / 'config.json')!r}: \"{_path(export, 'std')}\" is 0, "
                                 f"but ")
    assert not (tmp_path / "ev").exists()  # refused before anything was written


@pytest.mark.parametrize("text,expected", [
    ("[1, 2]", "holds a JSON list, not the object of fields an export card is; export again with"),
    ('"resnet18"', "holds a JSON str, not the object of fields an export card is"),
    ("{", "cannot read the export card"),
    ("", "cannot read the export card"),
])
def test_card_that_is_no_json_object(export, tmp_path, capsys, text, expected):
    (export / "config.json").write_text(text)
    msg = _load_error(export)
    assert expected in msg and str(export) in msg and "selfsup export RUN_DIR" in msg
    assert _cli_error(export, tmp_path, capsys) == msg


@pytest.mark.parametrize("missing", ["architecture", "in_chans", "input_size", "mean", "std"])
def test_card_lacking_a_required_field(export, tmp_path, capsys, missing):
    _edit(export, **{missing: ...})
    msg = _load_error(export)
    assert msg == (f"{str(export / 'config.json')!r} is not a selfsup export card: it lacks {_path(export, missing)}; "
                   f"export again "
                   f"with `selfsup export RUN_DIR {export}`")
    assert _cli_error(export, tmp_path, capsys) == msg


def test_optional_fields_may_be_absent_or_null(export):
    """A minimal hand-written card loads: kwargs null and no free-form fields; the card reports num_features."""
    card = json.loads((export / "config.json").read_text())
    if _timm_schema(export):  # timm's schema: the sections with what timm needs, no selfsup metadata
        minimal = {"architecture": card["architecture"], "model_args": {"in_chans": 1},
                   "pretrained_cfg": {k: card["pretrained_cfg"][k] for k in ("input_size", "mean", "std")}}
        (export / "config.json").write_text(json.dumps({**minimal, "model_args": {"in_chans": 1, **TINY}}))
        enc, loaded = load_encoder_and_card(export)
        assert loaded["num_features"] == enc.num_features == 64
        assert enc.selfsup_info == DataInfo(1, 16, 0, (0.5,), (0.25,))
        (export / "config.json").write_text(json.dumps(minimal))
        with pytest.raises(LoadError, match=r"do not fit 'resnet18' as config\.json describes it"):  # default widths
            selfsup.load_encoder(export)
        return
    minimal = {k: card[k] for k in ("architecture", "in_chans", "input_size", "mean", "std")}
    (export / "config.json").write_text(json.dumps({**minimal, "kwargs": TINY, "trained_steps": None}))
    enc, loaded = load_encoder_and_card(export)
    assert loaded["num_features"] == enc.num_features == 64
    assert enc.selfsup_info == DataInfo(1, 16, 0, (0.5,), (0.25,))
    (export / "config.json").write_text(json.dumps({**minimal, "kwargs": None}))
    with pytest.raises(LoadError, match=r"do not fit 'resnet18' as config\.json describes it"):  # default widths
        selfsup.load_encoder(export)


VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _vit_export(out: Path, **extra) -> tuple[Path, torch.nn.Module]:
    """A valid export of a one-block 1-channel ViT for 16x16 images (``extra``: more timm kwargs), and its encoder."""
    torch.manual_seed(0)
    kwargs = {**VIT, **extra}
    enc = create_encoder("vit_tiny_patch16_224", 1, kwargs).eval()
    cfg = load_config(None, ["method.name=mae", "data.name=digits", "data.image_size=16",
                             "encoder.name=vit_tiny_patch16_224", f"encoder.kwargs={json.dumps(kwargs)}"])
    return write_export(enc, make_card(cfg, DataInfo(1, 16, 10, (0.5,), (0.25,), 256), enc), out), enc


def test_input_size_that_a_fixed_size_vit_cannot_take(tmp_path, capsys):
    """A ViT whose patch embedding is built for 16x16 images refuses a card saying 32x32 at load, in one line
    (it used to load, then crash with a raw AssertionError at the first forward pass); a ViT built with
    dynamic_img_size takes other sizes, so the same edit loads and its features are the encoder's."""
    strict, _ = _vit_export(tmp_path / "strict")
    _edit(strict, input_size=[1, 32, 32])
    msg = _load_error(strict)
    size = _path(strict, "input_size")
    assert msg == (f'{str(strict / "config.json")!r}: "{size}" is [1, 32, 32], but the encoder it describes '
                   f"takes 16x16 images only (its patch embedding's img_size); set \"{size}\": [1, 16, 16] in "
                   f"that file")
    assert _cli_error(strict, tmp_path, capsys) == msg
    dynamic, enc = _vit_export(tmp_path / "dynamic", dynamic_img_size=True)
    _edit(dynamic, input_size=[1, 32, 32])
    loaded = selfsup.load_encoder(dynamic)
    assert loaded.selfsup_info.image_size == 32
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))  # [2, 32]


# --- the weights ------------------------------------------------------------------------------


def test_missing_weights(export, tmp_path, capsys):
    (export / "model.safetensors").unlink()
    expected = (f"{str(export)!r} is an incomplete export directory: it has config.json but no model.safetensors; "
                f"export again with `selfsup export RUN_DIR {export}`")
    assert _load_error(export) == expected
    assert _load_error(export / "config.json") == expected  # the card's path stands for its directory
    assert _cli_error(export, tmp_path, capsys) == expected


@pytest.mark.parametrize("damage,expected", [
    (lambda b: b[:len(b) // 2], "the file looks truncated or damaged, export again"),
    (lambda b: b[:40], "the file looks truncated or damaged"),
    (lambda b: b"", "should hold the encoder's weights as safetensors but is an empty file"),
    # the header intact, the second half of the tensors' bytes zeroed: only the checksum tells
    (lambda b: b[:len(b) // 2] + bytes(len(b) - len(b) // 2), "is not the file this export wrote: its SHA-256"),
])
def test_damaged_weights(export, tmp_path, capsys, damage, expected):
    weights = export / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    msg = _load_error(export)
    assert expected in msg and str(weights) in msg and f"`selfsup export RUN_DIR {export}`" in msg
    assert _cli_error(export, tmp_path, capsys) == msg


def test_weights_replaced_by_nan_or_integer_tensors(export):
    """Without a checksum (older exports, or deleted after a deliberate replacement), the values are checked."""
    weights = export / "model.safetensors"
    _edit(export, weights_sha256=...)
    state = load_file(str(weights))
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(weights))
    n = len(state)
    assert _load_error(export) == (f"the weights in {str(weights)!r} are damaged: 1 of its {n} tensors hold NaN or "
                                   f"infinite values (e.g. 'layer2.0.conv1.weight'); export the run again with "
                                   f"`selfsup export RUN_DIR {export}`")
    state["layer2.0.conv1.weight"] = torch.zeros_like(state["layer2.0.conv1.weight"], dtype=torch.int32)
    save_file(state, str(weights))
    assert ("1 tensors hold another kind of number than the model's (e.g. 'layer2.0.conv1.weight': file torch.int32 "
            "vs model torch.float32)") in _load_error(export)


def test_replaced_weights_with_the_checksum_deleted_load(export, pristine):
    """The checksum's message names the way out for a deliberate replacement: deleting it loads the new weights."""
    weights = export / "model.safetensors"
    state = load_file(str(weights))
    state["conv1.weight"] = state["conv1.weight"] * 2
    save_file(state, str(weights))
    assert f'delete "{_path(export, "weights_sha256")}" from config.json' in _load_error(export)
    _edit(export, weights_sha256=...)
    assert torch.equal(selfsup.load_encoder(export).conv1.weight, state["conv1.weight"])
    assert not torch.equal(selfsup.load_encoder(pristine).conv1.weight, state["conv1.weight"])


def test_export_records_the_checksum_of_its_weights(pristine):
    import hashlib

    card = json.loads((pristine / "config.json").read_text())["selfsup"]
    assert card["weights_sha256"] == hashlib.sha256((pristine / "model.safetensors").read_bytes()).hexdigest()


def test_a_field_given_twice_in_a_hand_edited_card_is_refused(export, tmp_path, capsys):
    """json keeps the last of two equal keys silently; a card whose editor wrote "in_chans" twice
    is refused in one line naming the key, by the library and by the CLI."""
    text = (export / "config.json").read_text()
    assert text.count('"in_chans": 1') == 1
    (export / "config.json").write_text(text.replace('"in_chans": 1', '"in_chans": 1, "in_chans": 3'))
    msg = _load_error(export)
    assert msg == f"{str(export / 'config.json')!r} gives 'in_chans' twice; keep one of them in that file"
    assert _cli_error(export, tmp_path, capsys) == msg


def test_training_time_goes_to_the_card_only_for_the_weights_it_timed(tmp_path):
    """The card's training minutes and epochs come from the run's training_time.json only when its step
    count is the exported checkpoint's: an earlier checkpoint of the run did not take the run's time."""
    from selfsup.artifacts.load import run_training_time

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    record = {"seconds": 90.0, "steps": 40, "epochs": 2, "sessions": [{"seconds": 90.0, "steps": 40, "resumed": False}]}
    (run / "training_time.json").write_text(json.dumps(record))
    assert run_training_time(run, 40) == record
    assert run_training_time(run / "checkpoints" / "last.ckpt", 40) == record
    assert run_training_time(run / "checkpoints" / "epoch=0.ckpt", 20) is None  # an earlier checkpoint
    assert run_training_time(tmp_path / "loose.ckpt", 40) is None  # a checkpoint outside a run
    (run / "training_time.json").write_text("{not json")
    assert run_training_time(run, 40) is None


def test_the_card_counts_in_the_singular_for_one():
    """"1 epochs completed" in every one-epoch card: a count of one takes the singular noun."""
    from selfsup.artifacts.modelcard import counted

    assert [counted(1, "epoch"), counted(3, "epoch"), counted(1200, "optimiser step"), counted(0, "epoch"),
            counted("?", "epoch"), counted(0.5, "warmup epoch")] == [
        "1 epoch", "3 epochs", "1,200 optimiser steps", "0 epochs", "? epochs", "0.5 warmup epochs"]


def test_a_short_run_is_timed_in_seconds_and_a_cut_short_epoch_as_its_share():
    """helper-52's card of a 1-step run: "after 1 optimiser step (1 epoch completed) in 0.0 wall minutes"."""
    from selfsup.artifacts.modelcard import _training_rows

    card = {"input_size": [1, 16, 16], "method": "simclr", "architecture": "resnet18", "num_features": 64, "mean": [0.5], "std": [0.5],
            "training_config": {},
            "trained_steps": 1, "trained_epochs": 0.25, "training_minutes": 0.004}
    schedule = dict(_training_rows(card))["schedule"]
    assert "written after 1 optimiser step (0.25 epochs completed) in 0.2 wall seconds;" in schedule, schedule
    card["training_minutes"] = 12.34
    assert "in 12.3 wall minutes;" in dict(_training_rows(card))["schedule"]


def test_the_card_carries_the_warnings_its_numbers_were_written_with():
    """helper-52's: results.md said "1% labels trains on 10 of 300 images" under its table; the export card showed
    the same numbers without it. The card keeps each row's warnings and lists them under its table."""
    from selfsup.artifacts.card import results_summary
    from selfsup.artifacts.modelcard import results_markdown

    small = "1% labels: the probe trains on 10 of 300 images (fewer than one per class)"
    rows = [{"label": "run r", "kind": "pretrained", "knn": {"k=20,T=0.07": {"top1": 70.0}},
             "linear": {"top1": 80.0, "seeds": 1}, "warnings": [small],
             "knn_index": {"warnings": ["approximate neighbours (IVF)"]}},
            {"label": "raw pixels", "kind": "pixels", "knn": {"k=20,T=0.07": {"top1": 60.0}},
             "linear": {"top1": 70.0, "seeds": 1}}]
    summary = results_summary(rows)
    assert summary["run r"]["warnings"] == [small, "approximate neighbours (IVF)"] and "warnings" not in summary["raw pixels"]
    text = results_markdown(summary, "digits")
    assert text.rstrip().splitlines()[-2:] == [f"- **Warning** (run r): {small}",
                                               "- **Warning** (run r): approximate neighbours (IVF)"]
    assert "**Warning**" not in results_markdown(results_summary(rows[1:]), "digits")


def test_the_card_says_when_its_numbers_were_measured_at_another_size():
    """helper-55's: `pretrain ... eval.image_size=20` on 16 px images exported a card whose results (measured at
    20 px) sat beside "Inputs are images resized to 16x16" with no word of the other size."""
    from selfsup.artifacts.card import results_summary
    from selfsup.artifacts.modelcard import results_markdown

    knn = {"k=20,T=0.07": {"top1": 50.0}}
    rows = [{"label": "SimCLR resnet18 (pretrained)", "kind": "pretrained", "image_size": 20, "knn": knn},
            {"label": "raw pixels", "kind": "pixels", "image_size": 16, "knn": knn},
            {"label": "old row", "kind": "random", "knn": knn}]  # written before image_size was recorded
    summary = results_summary(rows)
    assert summary["SimCLR resnet18 (pretrained)"]["image_size"] == 20 and "image_size" not in summary["old row"]
    text = results_markdown(summary, "digits", 16)
    notes = [line for line in text.splitlines() if line.startswith("- **Note**")]
    assert notes == ["- **Note** (SimCLR resnet18 (pretrained)): measured on 20x20 images (eval.image_size), not the "
                     "16x16 inputs the exported encoder was trained at"]
    at20 = [line for line in results_markdown(summary, "digits", 20).splitlines() if line.startswith("- **Note**")]
    assert at20 == ["- **Note** (raw pixels): measured on 16x16 images (eval.image_size), not the 20x20 inputs the "
                    "exported encoder was trained at"]
