"""Pretrain, then evaluate, then export: the sequence ``selfsup pretrain`` runs, on the layer above
training (:mod:`selfsup.train.run`), evaluation (:mod:`selfsup.eval`) and the export
(:mod:`selfsup.artifacts`), which know nothing of each other's order. Also the config that any
target (run, checkpoint, export) was trained with (:func:`saved_config`), which only this layer
can read from all three."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from selfsup import distributed
from selfsup.artifacts.card import export_behind, results_summary
from selfsup.artifacts.load import export_encoder, load_encoder
from selfsup.artifacts.validate import read_card
from selfsup.config import ConfigError, RunConfig, apply_override, build_config
from selfsup.data import DataInfo
from selfsup.eval.evaluate import (NotScorable, cache_features, check_layers, check_probe_fractions, evaluate_layers,
                                   prepare)
from selfsup.eval.prepare import same_weights
from selfsup.eval.report import baseline_options, markdown_table
from selfsup.fileio import read_json_or_none, write_json, write_text
from selfsup.rundir import RESULTS_JSON, RunDir, is_export_dir, results_behind, run_steps, steps_text
from selfsup.safeload import LoadError, describe_file, load_checkpoint
from selfsup.train.checkpoint import check_selfsup_checkpoint
from selfsup.train.module import CHECKPOINT_KEY
from selfsup.train.run import pretrain
from selfsup.train.workdir import load_run_config


def pretrain_evaluate_export(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                             evaluate: bool = True, log: Callable[[str], None] = print) -> Path:
    """:func:`selfsup.train.run.pretrain`, then (``evaluate`` and ``eval.after_pretrain``) :func:`finish_run`
    while the run directory is still locked; the results table goes to ``log``. A stage ``eval.layers`` names
    that the encoder lacks fails before training, not after it. Returns the run directory.

    Raises:
        what :func:`selfsup.train.run.pretrain` raises; ConfigError for an ``eval.layers`` stage the
        encoder does not have.
    """
    after = evaluate and cfg.eval.after_pretrain

    def check(encoder: nn.Module, info: DataInfo) -> None:
        check_layers(cfg, encoder)
        check_baselines(cfg, run_dir, info)
        check_probe_fractions(cfg)  # a low-shot fraction too small for these labels fails now, not after training

    def evaluate_and_export(done: Path) -> None:
        table = finish_run(done, cfg, log)  # distributed: every rank extracts features, rank 0 reports
        if table is not None:
            log("\n" + table)
        name_left_behind(done)  # evaluation folders of older weights (results.json and export are new)

    def name_left_behind(done: Path) -> None:
        if distributed.rank() == 0:
            for line in left_behind(done):
                log(line)

    return pretrain(cfg, run_dir=run_dir, resume=resume, log=log,
                    then=evaluate_and_export if after else name_left_behind, check_encoder=check if after else None)


def left_behind(run_dir: Path) -> list[str]:
    """One line for each output of ``run_dir`` written for weights it has trained past since (a resume without
    the evaluation), or read while it was still training: its results.json (rows' ``trained_steps``,
    ``mid_training``) and its export (card's ``trained_steps``), each with the command that brings it up to
    date, and one line naming its evaluation, transfer and detection folders of such weights; none when all
    are of the weights now, or absent."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    now = run_steps(run_dir)
    lines = []
    rows = read_json_or_none(run.results_json)
    if isinstance(rows, list) and (behind := results_behind(rows, now)) is not None:
        lines.append(f"[pretrain] {run.results_json} holds the numbers of the weights {behind}, not of the {now} "
                     f"steps now: selfsup eval {run_dir}{baseline_options(rows)} for them")
    folders = [str(f) for f in run.evaluation_folders()
               if isinstance(saved := read_json_or_none(f / RESULTS_JSON), list) and results_behind(saved, now)]
    if folders:
        lines.append(f"[pretrain] {len(folders)} evaluation folder{'s' * (len(folders) > 1)} of this run "
                     f"hold{'s' * (len(folders) == 1)} numbers of older weights (selfsup compare warns on them; "
                     f"evaluate again for the weights now): {', '.join(folders)}")
    if is_export_dir(run.export) and (behind := export_behind(run.export)) is not None:
        lines.append(f"[pretrain] {run.export} holds the encoder after {steps_text(behind[1])}, not the {now} now: "
                     f"selfsup export {run_dir} {run.export} for it")
    return lines


def baseline_targets(cfg: RunConfig) -> list[str]:
    """The evaluation targets of ``eval.baselines``: ``random`` (and ``random:``) is the config's encoder
    at random init, ``random:NAME`` another timm model, ``pixels`` the raw pixels, anything else a path."""
    return [f"random:{cfg.encoder.name}" if b in ("random", "random:") else b for b in cfg.eval.baselines]


def check_baselines(cfg: RunConfig, run_dir: str | Path | None = None, info: DataInfo | None = None) -> None:
    """Refuse, before pretraining, an ``eval.baselines`` entry the evaluation after it would fail on or
    repeat: an empty one, a ``random:NAME`` timm does not have, a path that does not exist or holds no
    encoder (read with :func:`selfsup.artifacts.load.load_encoder`), the run itself (``run_dir``), or one
    encoder given twice however it is spelled (``random`` and ``random:resnet18`` of a resnet18 run); with
    the training data's ``info``, a ``random:`` encoder that cannot take its images (built and run once,
    :func:`selfsup.encoders.check_pixels_seen`: a ViT of fixed size 224 on 16 px images).

    Raises:
        ConfigError: one line naming the entry and the fix.
    """
    import timm

    from selfsup.rundir import target_key

    own = None if run_dir is None else target_key(str(run_dir))
    seen: dict[str, str] = {}
    for given, target in zip(cfg.eval.baselines, baseline_targets(cfg)):
        if not target.strip():
            raise ConfigError(f"eval.baselines: an empty entry in {cfg.eval.baselines!r}; give random, pixels, "
                              f"random:<timm-name> or the path of a run, an export or a checkpoint")
        if target.startswith("random:"):
            name = target.removeprefix("random:")
            if name not in timm.list_models():
                raise ConfigError(f"eval.baselines: {given!r} names no timm model ({name!r}); use random (the "
                                  f"config's encoder), random:<timm-name>, pixels or the path of a run or export")
            if info is not None:  # it failed on its first forward pass once training had ended
                from selfsup.encoders import EncoderError, check_pixels_seen
                from selfsup.eval.target import at_size, resolve_target

                base = at_size(resolve_target(target, cfg, lambda: info), cfg.eval.image_size)
                try:
                    check_pixels_seen(base.encoder, base.info.in_chans, base.info.image_size, base.label,
                                      "eval.image_size")
                except EncoderError as err:
                    raise ConfigError(f"eval.baselines: {given!r} cannot be evaluated on these images: {err}; drop "
                                      f"it") from None
        elif target != "pixels":
            if target_key(target) == own:
                raise ConfigError(f"eval.baselines: {given!r} is this run itself, which is evaluated anyway; "
                                  f"drop it")
            if not Path(target).expanduser().exists():
                raise ConfigError(f"eval.baselines: {given!r} is neither random, pixels, random:<timm-name> nor an "
                                  f"existing path (a run, an export or a checkpoint); fix or drop it before "
                                  f"pretraining")
            try:  # read now, not after training: a folder or file that holds no encoder failed there
                load_encoder(Path(target).expanduser())
            except LoadError as err:
                raise ConfigError(f"eval.baselines: {given!r} holds no encoder to evaluate: {err}") from None
        key = target_key(target)
        if key in seen:
            raise ConfigError(f"eval.baselines: {given!r} is given twice; give each baseline once" if seen[key] ==
                              repr(given) else f"eval.baselines: {given!r} and {seen[key]} are the same baseline; "
                              f"give each once")
        seen[key] = repr(given)


def evaluate_run(run_dir: Path, cfg: RunConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate the run's encoder and ``cfg.eval.baselines``; write results.json/.md.

    When the training data cannot score kNN or probes (no labels, e.g. a flat folder of
    images, or a single class) nothing is evaluated or written: one line says why and how to
    evaluate the run on labelled data, and the result is ``[]`` (as on ranks other than 0)."""
    targets = [str(run_dir), *baseline_targets(cfg)]
    features = RunDir(run_dir).features
    try:  # the data is checked before any feature is extracted
        if distributed.is_distributed():  # every rank extracts its share of the features; rank 0 scores them
            quiet = log if distributed.rank() == 0 else lambda s: None
            prepared = [cache_features(t, cfg, features, log=quiet, load=load_encoder) for t in targets]
            if distributed.rank() != 0:
                return []
        else:
            prepared = [prepare(t, cfg, features, load_encoder) for t in targets]
        # a baseline with the trained run's weights (its old export after a resume that trained nothing, a run
        # trained the same way) would print the run's numbers again as a baseline's
        same = [targets[i] for i, j in same_weights(prepared) if j == 0]
        left_out = [f"Baseline {t} (eval.baselines) has this run's own weights: left out (its row would repeat the "
                    f"run's)." for t in same]
        for line in left_out:
            log(f"[eval] {line}")
        targets, prepared = ([t for t in targets if t not in same],
                             [p for t, p in zip(targets, prepared) if t not in same])
        per_target = [evaluate_layers(t, cfg, features, log=log, prepared=p, load=load_encoder)
                      for t, p in zip(targets, prepared)]  # one row per stage of eval.layers (pixels: one)
    except NotScorable as err:
        if distributed.rank() == 0:
            log(f"[eval] kNN and linear probes skipped: {err.reason}; to evaluate this run on a labelled folder "
                f"(class subfolders): selfsup eval {run_dir} data.root=LABELLED_FOLDER")
        return []
    for row in per_target[0]:
        row["label"] = f"{cfg.method.__class__.__name__.removesuffix('Config')} {cfg.encoder.name} (pretrained)"
    rows = [row for target_rows in per_target for row in target_rows]
    write_json(rows, RunDir(run_dir).results_json)
    write_text(markdown_table(rows, left_out), RunDir(run_dir).results_md)
    return rows


def finish_run(run_dir: Path, cfg: RunConfig, log: Callable[[str], None] = print) -> str | None:
    """Evaluate and export after pretraining; returns the markdown table (None on the ranks
    other than 0 of a distributed run, which only help extract features, and when the
    training data has no labels to evaluate with: the encoder is exported all the same)."""
    rows = evaluate_run(run_dir, cfg, log)
    if distributed.rank() != 0:
        return None
    export_dir = export_encoder(run_dir, RunDir(run_dir).export, results=results_summary(rows) if rows else None)
    log(f"[export] encoder written to {export_dir} (loads with timm.create_model, see {export_dir / 'config.json'})")
    return RunDir(run_dir).results_md.read_text() if rows else None


def saved_config(path: str | Path, overrides: list[str] = ()) -> RunConfig | None:
    """The config a run directory, a selfsup checkpoint (``.ckpt``: the config stored in it)
    or an export directory was trained with, plus ``overrides``; None when ``path`` is
    none of these, or an export whose card holds no training config (the caller then uses
    the defaults plus the overrides). A checkpoint selfsup did not write is a LoadError."""
    p = Path(path)
    if RunDir(p).is_run():
        return load_run_config(p, overrides)
    raw = None
    if p.is_file() and describe_file(p) in ("a PyTorch checkpoint", "a pickle"):
        ckpt = load_checkpoint(p)
        check_selfsup_checkpoint(ckpt, p)
        raw = ckpt[CHECKPOINT_KEY]["config"]  # the data it was trained on, not the defaults
    elif is_export_dir(p):
        raw = read_card(p).get("training_config")
    if raw is not None:
        for ov in overrides:
            apply_override(raw, ov)
        return build_config(raw)
    return None
