"""``selfsup eval TARGET``: frozen features (kNN, linear probes), detection transfer (``--task detection``) and
fine-tuning / parameter-efficient transfer (``--protocol``), with their result folders and pictures.

Like :mod:`selfsup.cli`, nothing heavy is imported at module level: each command imports what it needs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.rundir import RunDir, results_behind, target_key, training_warning, weights_record

if TYPE_CHECKING:
    from selfsup.config import RunConfig
    from selfsup.eval.prepare import Prepared


def draw(folder: Path) -> None:
    """The pictures of a run or evaluation folder (selfsup.plots.plot_run), listed."""
    from selfsup.plots import plot_run

    written = plot_run(folder)
    if written:
        print("plots: " + ", ".join(str(p) for p in written))


def write_results(written: RunDir, rows: list[dict], table: str, plots: bool, kept: str = "") -> None:
    """``rows`` to ``written``'s results.json and ``table`` to its results.md, the table printed, the paths said
    (``kept``: what else was written), and the folder's pictures drawn when ``plots``."""
    from selfsup.fileio import write_json, write_text

    write_json(rows, written.results_json)
    write_text(table, written.results_md)
    print("\n" + table)
    print(f"results written to {written.results_json} and {written.results_md}" + (f"; {kept}" if kept else ""))
    if plots:
        draw(written.root)


def eval_command(args: argparse.Namespace) -> None:
    import json

    from selfsup.artifacts.load import load_encoder
    from selfsup.config import ConfigError
    from selfsup.eval.evaluate import changed_data_keys, data_tag, evaluate_layers, prepare
    from selfsup.eval.report import PRETRAINING_DATA_DIFFERS, markdown_table
    from selfsup.rundir import training_pid
    from selfsup.train.workdir import load_run_config

    target = Path(args.target)
    if args.out and args.task != "detection" and not args.protocol and RunDir(target).is_run() and \
            target_key(args.out) == target_key(args.target):
        args.out = None  # `eval RUN --out RUN` asks for the default place: the run's own (kept) results
    check_out_folder(args.out, "detection" if args.task == "detection" else "transfer" if args.protocol else "frozen",
                     args.target)
    # a repeat trained and printed the same row twice, however the path is spelled (r1, r1/, ./r1)
    same, own = [target_key(s) for s in args.baseline], target_key(args.target)
    for spec, key in zip(args.baseline, same):
        if same.count(key) > 1 or key == own:
            raise ConfigError(f"--baseline {spec} is given {'as the target too' if key == own else 'twice'}: "
                              f"give each encoder once")
    if args.task == "detection":  # the data chosen on the command line is the config's, so that keys that do
        # not apply to it (detection.tile_size on synthetic-fmnist, ...) are refused when the config is read
        args.overrides = [*args.overrides, *(f"detection.{key}={json.dumps(value)}" for key, value in
                                             (("dataset", args.dataset), ("test_dataset", args.test_dataset)) if value)]
    cfg = eval_config(args, args.overrides)
    quiet_if_asked(args.overrides, cfg)
    if args.transfer and not args.protocol:
        raise ConfigError("--transfer sets options of a transfer protocol: add --protocol finetune|partial|bitfit|"
                          "lora|prompt, or drop --transfer")
    if args.task == "detection":
        if args.protocol:
            raise ConfigError("--protocol adapts an encoder for classification; it does not apply to --task "
                              "detection (detection.trainable_layers sets how much of the encoder detection trains)")
        if cfg.eval.image_size:
            raise ConfigError("eval.image_size sets the side kNN, the linear probes and --protocol see; a detector "
                              "trains at detection.image_size: set that instead")
        check_inert_overrides(args, cfg, "detection")
        _eval_detection(args, cfg, target)
        return
    if args.protocol:
        _eval_transfer(args, cfg, target)
        return
    if args.dataset or args.test_dataset:
        raise ConfigError("--dataset and --test-dataset choose detection data; add --task detection, or set "
                          "data.name=... for kNN and linear probes")
    check_inert_overrides(args, cfg, "frozen")
    run = RunDir(target)
    is_run = run.is_run()
    cfg = without_training_size(cfg, target) if is_run else cfg
    in_place = is_run and not args.out  # results would go over the run's own results.json
    targets = [args.target, *args.baseline]
    # a non-run target's default: one folder per data (its feature cache) and, inside it, one per eval
    # settings and targets, so that another evaluation of the same target never replaces these results
    shared = None if (args.out or is_run) else target_eval_dir(args.target, cfg)
    out = Path(args.out) if args.out else (target if is_run else shared / f"eval-{eval_digest(cfg, targets)}")
    ensure_out_dir(out)
    cache = RunDir(shared if shared is not None else out).features
    changed_keys = changed_data_keys(load_run_config(target), cfg) if is_run else []
    changed = changed_keys if in_place else []
    # the run's image folder read now against what it trained on (the same config can read other files)
    # a fingerprint that differs on the same statistics is renewed by an evaluation in place of a run at rest
    since = data_changed_since(target, cfg, refresh=in_place and training_pid(target) is None) \
        if is_run and not changed_keys else None
    if changed:  # other data: the run's own results.json stays as it is; one folder per data for the features,
        # one per settings and targets for the results (another evaluation of that data never replaces them)
        cache = RunDir(run.eval_dir(data_tag(cfg))).features
        out = run.eval_dir(f"{data_tag(cfg)}-{eval_digest(cfg, targets)}")
        print(f"[eval] evaluating on other data than the run's ({', '.join(changed)} changed): results go to {out}, "
              f"{own_results_note(run)}")
    prepared = [prepare(t, cfg, cache, load_encoder) for t in targets]  # every target read before any extraction
    check_distinct_encoders(targets, prepared)
    rows = [row for t, p in zip(targets, prepared)  # cache keyed by data
            for row in evaluate_layers(t, cfg, cache, prepared=p, load=load_encoder)]
    reason = run_results_kept(target, cfg, rows, since) if in_place and not changed else None
    if reason:  # other eval settings or fewer rows: never replace the run's results with them
        out = run.eval_dir(f"{data_tag(cfg)}-{eval_digest(cfg, targets)}")
        print(f"[eval] {reason}: results go to {out}, {own_results_note(run, data_changed=since is not None)}")
    differs = pretraining_data_differs(changed_keys, since)
    table = markdown_table(rows)
    if differs:  # numbers of other images than the encoder was pretrained on: said in both files
        for r in rows:
            r[PRETRAINING_DATA_DIFFERS] = differs
        table = with_pretraining_data_line(table, target, differs)
    written = RunDir(out)  # an evaluation folder has a run directory's results.json / results.md / features/
    write_results(written, rows, table, cfg.eval.plots)




def pretraining_data_differs(changed_keys: list[str], since: str | None) -> str | None:
    """How the evaluation data differs from what the run was pretrained on: the ``data`` keys that differ from
    its config (:func:`selfsup.eval.evaldata.changed_data_keys`), else ``since`` (its image folder changed,
    :func:`data_changed_since`); None when neither."""
    if changed_keys:
        return f"{', '.join(changed_keys)} differ{'s' if len(changed_keys) == 1 else ''} from the run's config"
    return since


def with_pretraining_data_line(table: str, run: Path, differs: str | None) -> str:
    """results.md's text ``table`` with, as its last line when ``differs``, that the evaluation data is not what run
    ``run`` was pretrained on: ``differs`` says how (other ``data`` keys, or its image folder's files changed since,
    :func:`data_changed_since`); ``table`` itself otherwise."""
    if not differs:
        return table
    return (table.rstrip("\n") + f"\n\n**Note**: the evaluation data differs from the data {run} was pretrained on "
            f"({differs}): these numbers are of other images than its pretraining saw.\n")


EVALUATION_ONLY = ["method.name=simclr"]  # the method is not used by an evaluation, but the config needs one
# config sections (and top-level keys) an evaluation reads little or nothing of: an override of them is checked
# against what it changes (:func:`check_inert_overrides`)
CHECKED_SECTIONS = ("method", "optim", "trainer", "encoder", "detection", "name", "out_dir")
# the trainer keys each evaluation reads: the device and the progress bars (trainer.progress_bar=false given to
# eval acts as --quiet: quiet_if_asked) everywhere; a transfer also its Lightning Trainer's
TRAINER_READ = {"frozen": ("accelerator", "progress_bar"), "detection": ("accelerator", "progress_bar"),
                "transfer": ("accelerator", "devices", "num_nodes", "strategy", "sync_batchnorm", "precision",
                             "progress_bar")}


def quiet_if_asked(overrides: list[str], cfg: RunConfig) -> None:
    """``trainer.progress_bar=false`` among ``selfsup eval``'s ``overrides`` turns its progress bars off, as
    ``--quiet`` does (the pretraining spelling of it: ``selfsup pretrain --quiet`` sets that key). The value a
    run's saved config holds is not acted on: a run pretrained with --quiet keeps the bars of a later eval."""
    import os

    from selfsup.progress import QUIET_ENV

    if not cfg.trainer.progress_bar and any(o.partition("=")[0].strip() == "trainer.progress_bar" for o in overrides):
        os.environ[QUIET_ENV] = "1"


def eval_config(args: argparse.Namespace, overrides: list[str]) -> RunConfig:
    """The config of ``selfsup eval`` (``args``) with ``overrides``: ``--config`` with them, else the one the
    target was trained with (a run, checkpoint or export: :func:`selfsup.pipeline.saved_config`), else the
    defaults; a placeholder method (:data:`EVALUATION_ONLY`) where none is given."""
    from selfsup.config import load_config
    from selfsup.pipeline import saved_config

    if args.config:
        return load_config(args.config, overrides, defaults=EVALUATION_ONLY)
    return saved_config(Path(args.target), overrides) or load_config(None, overrides, defaults=EVALUATION_ONLY)


def leaf_values(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The dotted key paths of a nested dict's leaves and their values (``{"encoder.kwargs.depth": 2}``)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(leaf_values(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def inert_reason(path: str, kind: str, target: str, random_changed: bool) -> str | None:
    """Why config key ``path`` (dotted, e.g. ``encoder.name``) has no effect on a ``kind`` evaluation ("frozen",
    "detection", "transfer") of ``target``, with the fix; None when the evaluation reads it. ``random_changed``:
    whether the overrides change a ``random:`` target's or baseline's encoder
    (:func:`selfsup.eval.target.random_encoder`), the one place ``encoder.name`` and ``encoder.kwargs`` act."""
    section, _, key = path.partition(".")
    key = key.split(".")[0]
    weights = "pixels are no encoder" if target == "pixels" else f"{target} names its own architecture" if \
        target.startswith("random:") else (f"{target}'s encoder is built from its own saved weights and "
                                           f"architecture (its checkpoint or export)")
    if section == "encoder" and key in ("name", "kwargs"):
        if random_changed:
            return None
        return (f"{weights}, so encoder.{key} changes nothing that is evaluated: it only shapes random: baselines "
                f"(random: alone is the config's encoder; encoder.kwargs apply to random:NAME of that name). To "
                f"evaluate another encoder give its run or export as the target (selfsup eval OTHER_RUN), or a "
                f"random-init one with --baseline random:<timm-name>; else drop it")
    if section == "encoder" and key == "channels_last":
        return None if kind == "frozen" else (f"only kNN and the linear probes read it (their feature extraction); "
                                              f"a {kind} evaluation does not: drop it")
    if section == "trainer":
        if key in TRAINER_READ[kind]:
            return None
        read = ", ".join(f"trainer.{k}" for k in TRAINER_READ[kind])
        fix = "drop it (--quiet turns the progress bars off)" if key == "progress_bar" else "drop it (" + {
            "frozen": "the linear probes train as eval.linear_epochs etc. say", "detection": "the detector trains as "
            "detection.epochs etc. say", "transfer": "a transfer trains as its --transfer options say, e.g. epochs=2"}[
            kind] + ")"
        return f"trainer.{key} is a pretraining setting and a {kind} evaluation reads only {read}: {fix}"
    if section == "detection":
        return None if kind == "detection" else (f"detection.* sets the detector of --task detection; this {kind} "
                                                 f"evaluation trains none: drop it, or add --task detection")
    if section in ("method", "optim"):
        return (f"selfsup eval pretrains nothing, so the pretraining {section} has no effect on the evaluation "
                f"(the encoder is evaluated as it is): drop it")
    if section in ("name", "out_dir"):
        return (f"{section} names a pretraining run's directory; an evaluation writes into the run it evaluates, "
                f"runs/eval/ or --out DIR: drop it, or give --out DIR")
    return None


def check_inert_overrides(args: argparse.Namespace, cfg: RunConfig, kind: str) -> None:
    """Refuse an override of ``selfsup eval`` (``args.overrides``) that changes a config value this ``kind`` of
    evaluation ("frozen", "detection", "transfer") never reads (:func:`inert_reason`): ``encoder.name=vit_...`` on
    a run evaluates the run's own encoder all the same (it is read from its checkpoint), so the user thought
    they evaluated another one. An override equal to the value the config has without it (the run's own) is
    accepted, and so is ``encoder.*`` where it shapes a ``random:`` target or baseline.

    Raises:
        ConfigError: (one line) naming the override, why it has no effect, and the fix."""
    from selfsup.config import ConfigError, to_dict
    from selfsup.eval.target import random_encoder

    checked = [o for o in args.overrides if o.partition("=")[0].strip().split(".")[0] in CHECKED_SECTIONS]
    if not checked:
        return
    try:
        base = eval_config(args, [o for o in args.overrides if o not in checked])
    except ConfigError:  # the config needs one of them to be whole: nothing to compare against
        return
    now, before = leaf_values(to_dict(cfg)), leaf_values(to_dict(base))
    changed = [p for p in dict.fromkeys([*now, *before]) if now.get(p) != before.get(p)]
    specs = [s for s in [args.target, *args.baseline] if s.startswith("random:")]
    random_changed = any(random_encoder(s, cfg) != random_encoder(s, base) for s in specs)
    for override in checked:
        key = override.partition("=")[0].strip()
        if random_changed and not args.target.startswith("random:") and key.split(".")[0] == "encoder" and \
                any(p.startswith(("encoder.name", "encoder.kwargs")) and p.startswith(key) for p in changed):
            print(f"[eval] {override} shapes the random-init baseline{'s' if len(specs) > 1 else ''} "
                  f"({', '.join(specs)}) only: {args.target} is evaluated with its own encoder")
        for path in changed:
            if not (path == key or path.startswith(key + ".") or key.startswith(path + ".")):
                continue
            why = inert_reason(path, kind, args.target, random_changed)
            if why:
                raise ConfigError(f"{override} has no effect on selfsup eval {args.target}"
                                  f"{' --task detection' if kind == 'detection' else ''}"
                                  f"{f' --protocol {args.protocol}' if kind == 'transfer' else ''}: {why}")


def without_training_size(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """``cfg`` with ``eval.image_size`` unset when it asks for what the run's own evaluation had: the run's
    training size, on the run's own data (every target then sees that size either way), so that the
    evaluation is the run's own (its results.json, not a folder of other settings)."""
    import dataclasses
    import json

    from selfsup.eval.evaluate import changed_data_keys
    from selfsup.train.workdir import load_run_config

    info = RunDir(run_dir).data_info
    if cfg.eval.image_size is None or not info.is_file() or changed_data_keys(load_run_config(run_dir), cfg):
        return cfg
    if json.loads(info.read_text()).get("image_size") != cfg.eval.image_size:
        return cfg
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, image_size=None))


def transfer_settings(options: Any, size: int) -> dict[str, Any]:
    """What a transfer run was asked for, as its results.json rows record it: the protocol's options
    (``asdict``, JSON-normalised) and the side length the encoder saw."""
    import dataclasses
    import json

    return json.loads(json.dumps({"options": dataclasses.asdict(options), "image_size": size}, default=str))


def transfer_folder(base: Path, protocol: str, settings: dict[str, Any], trained_size: int) -> Path:
    """Where a transfer's results go: ``base/transfer-PROTOCOL``, unless that folder holds results of other
    ``settings`` (:func:`transfer_settings`; rows without ``image_size`` saw ``trained_size``), which are
    kept: then ``base/transfer-PROTOCOL-<8 hex digits of the settings>`` (a second transfer with another
    size or options replaced the first's results)."""
    import hashlib
    import json

    default = base / f"transfer-{protocol}"
    saved = RunDir(default).results_json
    try:
        rows = json.loads(saved.read_text()) if saved.is_file() else []
    except ValueError:
        rows = [{}]  # unreadable: kept as it is, never written over
    if all({"options": r.get("options"), "image_size": r.get("image_size", trained_size)} == settings for r in rows):
        return default
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=4).hexdigest()
    return base / f"transfer-{protocol}-{digest}"


def check_distinct_encoders(targets: list[str], prepared: list[Prepared]) -> None:
    """ConfigError (one line) when two of ``targets`` (the target, then each ``--baseline``) are the same
    encoder (:func:`selfsup.eval.prepare.same_weights` of their ``prepared`` forms): a run and its export or
    checkpoint, ``random:`` and ``random:NAME`` of the config's encoder. Each gave a second row of the same
    numbers presented as a baseline."""
    from selfsup.config import ConfigError
    from selfsup.eval.prepare import same_weights

    for i, j in same_weights(prepared)[:1]:
        first = f"the target {targets[j]}" if j == 0 else f"--baseline {targets[j]}"
        raise ConfigError(f"--baseline {targets[i]} has the same weights as {first}: it is the same encoder, so its "
                          f"row would repeat the numbers; give each encoder once")


def results_kind(rows: Any) -> str | None:
    """Which evaluation wrote results.json ``rows``: "transfer" (rows with a protocol), "detection" (task
    detection), "frozen" (kNN and probes); None for anything else (not a list of rows)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return "transfer" if "protocol" in rows[0] else "detection" if rows[0].get("task") == "detection" else "frozen"


def check_out_folder(out: str | None, kind: str = "frozen", target: str | None = None) -> None:
    """ConfigError (one line) when ``--out`` is a run directory or an export directory: an evaluation
    writes results.json / results.md (a transfer also classifier/) there, which replaced the run's own
    evaluation (what compare and the export card read) or sat in an export's files; when it is inside a
    run's own folders (checkpoints/, ..., its detection/ folder itself, or inside that folder for an evaluation
    that is no detection); or when it holds the results of
    another ``kind`` of evaluation (:func:`results_kind`: a kNN evaluation over a transfer's numbers, beside
    its classifier); or when it is inside a run directory that ``target`` (the evaluated encoder) is not part
    of: compare and a resume read a run's folders as that run's evaluations, so another encoder's numbers
    there were shown under the run's method, encoder and epochs (and warned as of its older weights)."""
    from selfsup.config import ConfigError
    from selfsup.fileio import read_json_or_none
    from selfsup.rundir import DETECTION_DIR, is_export_dir

    if out is None:
        return
    there = results_kind(read_json_or_none(RunDir(Path(out)).results_json))
    if there is not None and there != kind:
        raise ConfigError(f"--out {out} holds the results of a {there} evaluation (its results.json): this {kind} "
                          f"evaluation would replace them; give a folder of its own")
    for folder in [Path(out), *Path(out).parents]:  # RUN/detection/: the run's detection evaluations, one each
        if folder.name != DETECTION_DIR or not RunDir(folder.parent).is_run():
            continue
        if kind != "detection":
            raise ConfigError(f"--out {out} is inside {folder}, where the run keeps its detection evaluations (compare "
                              f"and the resume read them as such): give this {kind} evaluation a folder of its own, "
                              f"e.g. {folder.parent}/{'transfer' if kind == 'transfer' else 'eval'}-mine or a path "
                              f"outside the run")
        if folder == Path(out):
            raise ConfigError(f"--out {out} is the run's own {DETECTION_DIR}/ folder (one folder per detection setting "
                              f"inside it): give a folder of its own, e.g. {out}/mine or a path outside the run")
    from selfsup.rundir import CHECKPOINT_DIR, EXPORT_DIR, FEATURES_DIR, LOGS_DIR, PLOTS_DIR

    for folder in [Path(out), *Path(out).parents]:  # a run's own folders hold its files, not an evaluation's
        if folder.name in (CHECKPOINT_DIR, LOGS_DIR, FEATURES_DIR, PLOTS_DIR, EXPORT_DIR) and \
                RunDir(folder.parent).is_run():
            raise ConfigError(f"--out {out} is inside {folder}, the run's own {folder.name}/ folder (selfsup keeps "
                              f"the run's files there): give a folder of its own, e.g. {folder.parent}/eval-mine or a "
                              f"path outside the run")
    home = next((f for f in Path(out).resolve().parents if RunDir(f).is_run()), None)  # the run --out is inside
    # the target (a run, its checkpoint or export) is part of that run; random:/pixels never are
    inside = home is not None and target is not None and Path(target).exists() and \
        Path(target).resolve().is_relative_to(home)
    if home is not None and target is not None and not inside:
        raise ConfigError(f"--out {out} is inside run {home}, whose folders compare and its resume read as that run's "
                          f"evaluations, but this evaluates {target}: give it a folder of its own outside {home}"
                          + (f" (or inside {target})" if target and RunDir(Path(target)).is_run() else ""))
    kind = "a run directory" if RunDir(Path(out)).is_run() else "an export directory" if is_export_dir(out) else None
    if kind:
        own = "the run's own evaluation (what compare and its export card read)" if kind.startswith("a run") else \
            "files beside the export's"
        raise ConfigError(f"--out {out} is {kind}: this evaluation's results.json and results.md would take the "
                          f"place of {own}; give a folder of its own (without --out, an evaluation of a run writes "
                          f"into the run and never replaces its results with those of other settings)")


def eval_digest(cfg: RunConfig, targets: list[str]) -> str:
    """8 hex digits of an evaluation's ``eval`` settings and targets (with baselines): the name part that
    keeps evaluations with other settings in folders of their own."""
    import hashlib
    import json

    from selfsup.config import to_dict

    return hashlib.blake2b(json.dumps([to_dict(cfg)["eval"], targets], sort_keys=True).encode(),
                           digest_size=4).hexdigest()


def ensure_out_dir(out: Path) -> Path:
    """``out`` itself, once it is known that it can be created: a folder is made (and removed at once) in
    its nearest existing ancestor. Checked before anything is computed and leaving nothing behind (a
    command refused later leaves no folder), so that an output folder that cannot be made is a one-line
    ConfigError at the start, not a traceback after the training or extraction it would hold. A real
    attempt, not ``os.access``: that says yes to root everywhere, and to special filesystems (/proc)."""
    import tempfile

    from selfsup.config import ConfigError

    base = out.expanduser().absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        problem = f"{base} is a file, not a folder"
    else:
        try:
            Path(tempfile.mkdtemp(prefix=".selfsup-out-check-", dir=base)).rmdir()
            problem = None
        except OSError as err:
            problem = f"nothing can be created in {base}: {err.strerror or err}"
    if problem:
        raise ConfigError(f"--out {out}: cannot create this folder ({problem}): pass a folder path that can be "
                          f"created and written")
    return out


def eval_folder(spec: str) -> str:
    """The folder under runs/eval/ for target ``spec`` when no --out is given, one per target so
    that evaluating another one never replaces its results: ``pixels``, ``random-resnet18``, or a
    path's last two parts plus a hash of the full path (``run1-export-3f2a9c1e``)."""
    import hashlib
    import re

    if spec == "pixels" or spec.startswith("random:"):
        return spec.replace(":", "-")
    path = Path(target_key(spec))  # one folder however the path is spelled
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(path.parts[-2:]))
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def target_eval_dir(spec: str, cfg: RunConfig) -> Path:
    """The default folder (no --out) of an evaluation of the non-run target ``spec`` on ``cfg``'s data:
    ``runs/eval/<eval_folder(spec)>/<data tag>``, the data tag (:func:`selfsup.eval.evaldata.data_tag`)
    naming the dataset and a digest of what decides its images; for ``random:<name>`` also a digest
    of what decides the encoder (its kwargs when ``encoder.name`` is that model, and ``seed``). One
    folder per target used to take every evaluation of it, so one on other data (or another random
    encoder) silently replaced the results of the one before."""
    from selfsup.eval.evaldata import data_tag

    return Path("runs") / "eval" / eval_folder(target_spec(spec, cfg)) / (data_tag(cfg) + init_tag(spec, cfg))


def target_spec(spec: str, cfg: RunConfig) -> str:
    """``spec`` with ``random:`` alone spelled as the config's encoder (``random:resnet18``)."""
    from selfsup.eval.target import random_encoder

    return f"random:{random_encoder(spec, cfg)[0]}" if spec.startswith("random:") else spec


def init_tag(spec: str, cfg: RunConfig) -> str:
    """``-init-<8 hex digits>`` of what decides a ``random:`` target's encoder (its name, kwargs and
    ``seed``: :func:`selfsup.eval.target.random_encoder`), so that two random encoders never share a
    results folder; ``""`` for any other target."""
    import hashlib
    import json

    from selfsup.eval.target import random_encoder

    if not spec.startswith("random:"):
        return ""
    name, kwargs = random_encoder(spec, cfg)
    encoder = {"name": name, "kwargs": kwargs, "seed": cfg.seed}
    return "-init-" + hashlib.blake2b(json.dumps(encoder, sort_keys=True, default=str).encode(),
                                      digest_size=4).hexdigest()


def run_results_kept(run: Path, cfg: RunConfig, rows: list[dict], since: str | None = None) -> str | None:
    """Why ``rows`` (an evaluation of run directory ``run`` on its own data) must not replace the
    run's ``results.json``, or None when they may: they were read while another process trained the run
    (``mid_training``), its image folder is not what it trained on (:func:`data_changed_since`), the ``eval``
    settings differ from the run's config (other protocol, other numbers), or a row of the saved results (a
    baseline, a stage) has no counterpart among ``rows``. ``since``: :func:`data_changed_since` of ``run`` and
    ``cfg``, computed by the caller (it reads the whole image folder)."""
    import json

    from selfsup.config import to_dict
    from selfsup.train.workdir import load_run_config

    if any(r.get("mid_training") for r in rows):  # the run's own results are of its weights when it ends
        return "the run is being trained by another process (these numbers are of a checkpoint on the way)"
    if since:  # data_changed_since(run, cfg), read before the evaluation
        return since
    before, after = to_dict(load_run_config(run))["eval"], to_dict(cfg)["eval"]
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if differ:
        return f"eval settings differ from the run's ({', '.join(f'eval.{k}' for k in differ)})"
    saved = RunDir(run).results_json
    if not saved.is_file():
        return None
    from selfsup.eval.report import baseline_options

    have = {(r.get("kind"), r.get("layer")) for r in rows}
    missing = [r for r in json.loads(saved.read_text()) if (r.get("kind"), r.get("layer")) not in have]
    if missing:
        again = baseline_options(missing)
        labels = ", ".join(str(r.get("label")) for r in missing)
        return (f"the run's results.json holds rows this evaluation lacks ({labels}; "
                f"{f'add{again}' if again else 'add --baseline'} for them)")
    return None


def data_changed_since(run: Path, cfg: RunConfig, refresh: bool = False) -> str | None:
    """Why the images ``cfg`` reads are not those run directory ``run`` trained on, for an image folder: its
    training images now (the run's ``data.subset`` of them) against the run's ``data_info.json`` (image count,
    classes, channel mean and std: :func:`selfsup.train.resume.check_same_data`); files added, removed or changed
    since, or (a run made before roots were stored absolute) a relative ``data.root`` read from another working
    directory. None for other datasets, or when they agree. When the files' fingerprint is the one the run kept
    (:func:`selfsup.train.resume.same_fingerprint`: paths, sizes, modes, inodes, mtimes, ctimes), the folder is
    taken as unchanged without decoding it (the channel statistics decode up to 10,000 images: minutes of
    photos). ``refresh``: when the files' fingerprint differs but the statistics agree (a ``chmod``, a backup
    restored), keep the fingerprint taken before decoding as the run's, so later evaluations do not decode
    again (an evaluation writing into the run, which no other process is training)."""
    import dataclasses

    from selfsup.data import build_dataset, subset
    from selfsup.fileio import read_json_or_none
    from selfsup.train.resume import data_differences, same_fingerprint, write_fingerprint

    then = read_json_or_none(RunDir(run).data_info)
    if cfg.data.name != "image-folder":
        return None
    if not isinstance(then, dict):  # no statistics to compare with: unknown, not unchanged, once the file is damaged
        return None if not RunDir(run).data_info.exists() else (
            f"the run's {RunDir(run).data_info} is not readable statistics (edited or cut short), so its image "
            f"folder {cfg.data.root} cannot be checked to be what it trained on")
    train = subset(build_dataset(cfg.data, "train"), cfg.data.subset, cfg.seed)
    fingerprint = train.fingerprint()  # before the statistics: a file changed while they decode is not kept
    if same_fingerprint(RunDir(run), fingerprint):
        return None
    now = dataclasses.asdict(train.info())
    differ = data_differences(then, now)
    if refresh and not differ and fingerprint is not None:
        write_fingerprint(RunDir(run), fingerprint)
    return (f"the run's image folder {cfg.data.root} is not what it trained on ({'; '.join(differ)}: its files "
            f"changed since)") if differ else None


def detection_tag(cfg: RunConfig) -> str:
    """A folder name for the detection data of ``cfg``: the dataset's kind, plus a short hash
    of the full spec (paths, separate test set, ``detection.deepforest_root``) when it names
    files, e.g. ``voc-3f2a9c1e``; ``-deformable`` appended for ``detection.deformable``."""
    import hashlib

    d = cfg.detection
    kind = d.dataset.split(":", 1)[0]
    root = d.deepforest_root if kind == "deepforest" else None
    model = "-deformable" if d.deformable else ""  # a DCNv2 detector's results never overwrite the plain one's
    if d.dataset in ("synthetic-fmnist", "deepforest") and not d.test_dataset and not root:
        return kind + model
    spec = f"{d.dataset}|{d.test_dataset or ''}" + (f"|{Path(root).expanduser().resolve()}" if root else "")
    return f"{kind}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}{model}"


def detection_digest(cfg: RunConfig, baselines: list[str]) -> str:
    """8 hex digits of what a detection result depends on besides its target: the ``detection`` settings
    (but ``num_workers``, which decodes the same images faster), the seed, the image source of the synthetic canvases (``data.name``, ``data.root``) and the baselines
    evaluated beside it; the name part that keeps detection results of other settings in folders of their own."""
    import hashlib
    import json

    from selfsup.config import to_dict

    settings = {k: v for k, v in to_dict(cfg)["detection"].items() if k != "num_workers"}  # how fast, not what
    what = [settings, cfg.seed, cfg.data.name, cfg.data.root, baselines]
    return hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()


def _eval_detection(args: argparse.Namespace, cfg: RunConfig, target: Path) -> None:
    """Detection transfer of the target and its baselines on one dataset; results.json/.md."""
    from selfsup.artifacts.load import load_encoder
    from selfsup.detection.evaluate import check_target, detection_data, detection_markdown, evaluate_detection

    # --dataset / --test-dataset are already in cfg: eval_command read them as overrides
    for spec in [args.target, *args.baseline]:
        check_target(spec)
    # a run's own detection folder; any other target its own folder (they all shared one per dataset, so
    # evaluating a second export replaced the first's results)
    # (two random encoders: a folder each, init_tag)
    base = (RunDir(target).detection if RunDir(target).is_run() else
            Path("runs") / "eval-detection" / eval_folder(target_spec(args.target, cfg)))
    # one per dataset and settings: none overwrites another (detection.epochs=16 replaced the default's results)
    leaf = f"{detection_tag(cfg)}-{detection_digest(cfg, args.baseline)}{init_tag(args.target, cfg)}"
    out = ensure_out_dir(Path(args.out) if args.out else base / leaf)
    data = detection_data(cfg)
    written = RunDir(out)
    pictures = written.plots if cfg.eval.plots else None  # test images with true and predicted boxes
    rows = [evaluate_detection(args.target, cfg, data=data, plot_dir=pictures, load=load_encoder)]
    in_chans = rows[0]["encoder"]["in_chans"]  # random baselines see the images as the target does
    rows += [evaluate_detection(spec, cfg, data=data, in_chans=in_chans, plot_dir=pictures, load=load_encoder)
             for spec in args.baseline]
    write_results(written, rows, detection_markdown(rows), cfg.eval.plots)


def pairs_value(pairs: list[str], key: str) -> str:
    """The text after ``KEY=`` of the last ``--transfer`` pair naming ``key``."""
    return next(p.partition("=")[2] for p in reversed(pairs) if p.partition("=")[0] == key)


def transfer_options(protocol: str, pairs: list[str], cfg: RunConfig) -> Any:
    """:class:`selfsup.transfer.TransferOptions` of ``--protocol`` and ``--transfer KEY=VALUE`` pairs (values
    read as YAML); the labelled fractions, seeds and seed default to ``eval.low_shot``, ``eval.probe_seeds``,
    ``seed``. ConfigError (one line) for a pair that is not KEY=VALUE or an unknown key."""
    import dataclasses

    import yaml

    from selfsup.config import ConfigError
    from selfsup.transferconfig import INTERNAL, TransferOptions

    known = {f.name for f in dataclasses.fields(TransferOptions)} - set(INTERNAL) | {"lr"}  # lr: lrs=[lr]
    values: dict[str, Any] = {"low_shot": list(cfg.eval.low_shot), "seeds": cfg.eval.probe_seeds, "seed": cfg.seed}
    seen: set[str] = set()
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if eq and key in seen:  # the last would silently win
            raise ConfigError(f"--transfer {key} is given more than once: give each option once")
        seen.add(key)
        if key == "protocol":
            raise ConfigError(f"--transfer {pair!r}: the protocol is chosen by --protocol (e.g. --protocol "
                              f"{text or 'lora'}), not --transfer")
        if not eq or key not in known:
            from selfsup.registry import closest

            hint = closest(key, sorted(known)) if eq else None
            raise ConfigError(f"--transfer {pair!r}: " + (f"did you mean {hint}? " if hint else "")
                              + f"give KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        values[key] = yaml.safe_load(text)
    given = sorted({pair.partition("=")[0] for pair in pairs} - {"lr"} | ({"lrs"} if "lr" in values else set()))
    if "lr" in values:
        if "lrs" in values:  # one would silently win over the other
            raise ConfigError(f"--transfer lr={values['lr']!r} and lrs={values['lrs']!r} both set the learning rates: "
                              f"give lr (one) or lrs (a list), not both")
        from selfsup.configread import coerce

        try:  # 3e-4 is a string to YAML 1.1; read as config values are
            values["lrs"] = [coerce(values.pop("lr"), float, "transfer.lr")]
        except ConfigError as err:
            if "float32" in str(err):  # a number, too large or too small to train with
                raise
            raise ConfigError(f"--transfer lr must be a number, got {pairs_value(pairs, 'lr')!r}: e.g. lr=3e-4 (or "
                              f"lrs=[1e-4, 3e-4])") from None
    from selfsup.configread import from_dict

    # typed like config keys: a scalar for a list, a word for a number is one line, not a traceback
    return from_dict(TransferOptions, {"protocol": protocol, "given": given, **values}, prefix="transfer")


def relaunches_this_command() -> bool:
    """Whether Lightning's DDP launcher, which starts the processes of ranks 1.. by re-running this program
    with the same arguments (``python -m MODULE ARGS`` or ``SCRIPT ARGS``), would re-run the selfsup command
    line: ``python -m selfsup.cli`` or the ``selfsup`` script. Not so for ``selfsup.cli.main([...])`` called
    from another program (pytest, a notebook, a sweep script), which every process would run again whole."""
    import sys

    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        return spec.name == "selfsup.cli"
    return Path(sys.argv[0]).name in ("selfsup", "selfsup.exe", "selfsup-script.py")


def own_results_note(run: Any, data_changed: bool = False) -> str:
    """Where the run's own results are, for a line saying that an evaluation goes elsewhere (a run made
    with --no-eval has none yet: said so, not a path that does not exist). ``data_changed``: the run's image
    folder is not what it trained on (:func:`data_changed_since`), so ``selfsup eval RUN`` cannot write them
    until the folder holds those images again (advising it would send the user round in a circle)."""
    from selfsup.rundir import training_pid

    if run.results_json.is_file():
        return f"the run's own results stay in {run.results_json}"
    if data_changed:
        return (f"the run has no results of its own yet, and selfsup eval {run.root} writes them only on the images "
                f"it trained on: put its image folder back as it was when it trained, then run "
                f"selfsup eval {run.root} again")
    if training_pid(run.root) is not None:  # `selfsup eval RUN` now would come here again
        return (f"the run has no results of its own yet (its training writes {run.results_json.name} when it ends, "
                f"or selfsup eval {run.root} after it)")
    return f"the run has no results of its own yet (selfsup eval {run.root} writes {run.results_json.name})"


def transfer_trainer(cfg: RunConfig, options: Any, say: Any = print) -> dict[str, Any]:
    """The ``lightning.Trainer`` keyword arguments of every transfer run of ``options``
    (:class:`selfsup.transferconfig.TransferOptions`): the config's accelerator, devices, num_nodes,
    strategy (fsdp, pretraining's, dropped on one process), sync_batchnorm, precision
    (:func:`selfsup.train.precision.resolve_precision`, its warning ``say``-ed) and progress bar (on a
    terminal, never with --quiet). Checked before any data is read.

    Raises:
        ConfigError: (one line, naming the fix) GPU devices (``-1``, indices) on the CPU
            (:func:`selfsup.train.resume.check_devices`); on several processes: a global batch they cannot split, fsdp
            (:func:`selfsup.transfer.train.process_count`), or a start from a program other than the selfsup
            command line (:func:`relaunches_this_command`)."""
    import os

    from selfsup import progress
    from selfsup.config import ConfigError
    from selfsup.train.precision import resolve_precision
    from selfsup.train.resume import check_devices, check_nodes
    from selfsup.transfer.train import per_process_batch, process_count

    t = cfg.trainer
    check_devices(t.devices, t.accelerator)
    check_nodes(t.num_nodes)
    trainer = {"accelerator": t.accelerator, "devices": t.devices, "num_nodes": t.num_nodes, "strategy": t.strategy,
               "sync_batchnorm": t.sync_batchnorm,
               "precision": resolve_precision(t.precision, t.accelerator, warn=lambda m: say(f"[precision] {m}")),
               "enable_progress_bar": t.progress_bar and progress.enabled()}
    processes = process_count(trainer)
    if processes == 1:
        if t.strategy == "fsdp":  # the run's pretraining strategy: one process shards nothing
            trainer["strategy"] = "auto"
        return trainer
    per_process_batch(options.batch_size, processes)
    launched_here = not any(os.environ.get(k) for k in ("LOCAL_RANK", "RANK"))  # not by torchrun, SLURM, ...
    if launched_here and not relaunches_this_command():
        raise ConfigError(f"trainer.devices={t.devices}: Lightning starts the other processes of --protocol "
                          f"{options.protocol} by re-running this program, which is not the selfsup command line: "
                          f"run `selfsup eval ...` or `python -m selfsup.cli eval ...`, or set trainer.devices=1")
    return trainer


def _eval_transfer(args: argparse.Namespace, cfg: RunConfig, target: Path) -> None:
    """Fine-tuning / parameter-efficient transfer of the target (selfsup.transfer); results.json/.md and
    the adapted classifier in the output folder. On several devices (trainer.devices, trainer.strategy=ddp)
    Lightning re-runs this command once per further process; every process trains each run on its share of
    the global batch, and rank 0 alone prints, exports and writes the results
    (:mod:`selfsup.transfer.train`)."""
    import json

    from selfsup.artifacts.load import load_encoder_and_card
    from selfsup.config import ConfigError
    from selfsup.eval.evaluate import evaluation_data, resolve_target
    from selfsup.eval.report import PRETRAINING_DATA_DIFFERS
    from selfsup.eval.target import random_encoder
    from selfsup.transfer import run_protocol
    from selfsup.transfer.export import minimal_card
    from selfsup.transfer.report import transfer_markdown
    from selfsup.distributed import is_rank_zero

    options = transfer_options(args.protocol, args.transfer, cfg)
    if args.target == "pixels" or args.baseline:
        raise ConfigError("--protocol adapts an encoder: give a run, an export, a checkpoint or random:<timm-name> "
                          "(no pixels, no --baseline; run the random-init twin as its own target)")
    check_inert_overrides(args, cfg, "transfer")
    say = print if is_rank_zero() else (lambda message: None)  # the other processes re-run this command
    trainer = transfer_trainer(cfg, options, say)  # refused before the data is read
    train_ds, test_ds, _ = evaluation_data(cfg)
    if args.target.startswith("random:"):  # random: alone is the config's encoder, in the card too
        t = resolve_target(args.target, cfg, train_ds.info)
        encoder, card = t.encoder, minimal_card(*random_encoder(args.target, cfg), t.info)
    else:
        encoder, card = load_encoder_and_card(target)
    # read with the weights: a resume (or the training running now) may move the run on while this adapts
    kind = "random" if args.target.startswith("random:") else "pretrained"
    record, training = weights_record(args.target, kind), training_warning(args.target, kind)
    from selfsup.encoders import check_pixels_seen

    trained_size = card["input_size"][-1]
    size = cfg.eval.image_size or trained_size  # a trained encoder adapts at its training size
    card = {**card, "input_size": [card["in_chans"], size, size]}  # the size the classifier is trained and exported at
    key = "data.image_size" if args.target.startswith("random:") and not cfg.eval.image_size else "eval.image_size"
    check_pixels_seen(encoder, card["in_chans"], size, args.target, key)  # before any training
    if size != train_ds.image_size:
        why = "eval.image_size" if cfg.eval.image_size else "the size it was trained at"
        say(f"[transfer] {args.target} sees the images at {size} px ({why}), resized from the data's "
            f"{train_ds.image_size} px")
    run = RunDir(target)
    other_data, differs = False, None
    if run.is_run():  # the run's own folder for its own data; other data gets its own folder, as a frozen eval
        from selfsup.eval.evaluate import changed_data_keys, data_tag
        from selfsup.train.workdir import load_run_config

        changed = changed_data_keys(load_run_config(target), cfg)
        # other data keys, or the run's image folder changed since it trained: the run's frozen numbers are of
        # other images, so neither its folder nor its results.json are this transfer's
        differs = pretraining_data_differs(changed, None if changed else data_changed_since(target, cfg))
        other_data = differs is not None
        base = run.eval_dir(data_tag(cfg)) if other_data else run.root
    else:
        base = target_eval_dir(args.target, cfg)
    settings = transfer_settings(options, size)
    out = ensure_out_dir(Path(args.out) if args.out else transfer_folder(base, args.protocol, settings, trained_size))
    if differs:  # said before the training, as a frozen evaluation says it
        say(f"[transfer] evaluating on other data than {target} was pretrained on ({differs}): results go to {out}")
    rows = run_protocol(encoder, card, train_ds, test_ds, options, out_dir=out, trainer=trainer)
    steps = record.get("trained_steps")
    for r in rows:  # which data (selfsup compare's data column), the side the encoder saw, the run's steps
        r.update(dataset=cfg.data.name, test_images=len(test_ds), image_size=size, target=args.target,
                 **{k: v for k, v in record.items() if k in ("trained_steps", "mid_training")})
        if differs:
            r[PRETRAINING_DATA_DIFFERS] = differs
        if training:
            r["warnings"] = [*(r.get("warnings") or []), training]
    if not is_rank_zero():  # rank 0 writes the results (and wrote the export) once
        return
    # the run's frozen numbers beside it: only of the same data (its own) and each row's own size
    frozen = json.loads(run.results_json.read_text()) if run.results_json.is_file() and not other_data else []
    for r in frozen:  # rows written before image_size was recorded saw the training size
        r.setdefault("image_size", trained_size)
    # numbers of the weights before a resume that trained on (with --no-eval) are not this encoder's
    # (and none of a checkpoint read while the run trained, nor beside a transfer of one)
    kept_rows = [r for r in frozen if r.get("kind") != "pretrained" or (
        r.get("trained_steps", steps) == steps and not r.get("mid_training") and not record.get("mid_training"))]
    left_out = [r for r in frozen if r not in kept_rows]
    behind = None if not left_out else (results_behind(left_out, steps) or "of another checkpoint")
    frozen = kept_rows
    written = RunDir(out)
    if args.protocol == "prompt":  # plain timm has no place for the tokens
        kept = (f"the prompt tokens and head in {out / 'prompt.safetensors'} and the frozen ViT in {out / 'encoder'} "
                f"(load both with selfsup.transfer.export.load_prompted({str(out)!r}))")
    else:
        kept = f"the adapted classifier in {out / 'classifier'}" + (
            f" (LoRA merged; the adapter and head for peft in {out / 'adapter'})" if args.protocol == "lora" else "")
    table = transfer_markdown(args.target, rows, frozen, other_data, behind)
    write_results(written, rows, with_pretraining_data_line(table, target, differs), plots=False, kept=kept)
