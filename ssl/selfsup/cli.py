"""Command line: ``selfsup pretrain | eval | export | plot | compare | list | config``.

``selfsup --help``, ``selfsup CMD --help``, ``selfsup list`` and ``selfsup config`` (without
``method`` keys or ``--file``) import neither torch, Lightning nor timm: each command imports
what it needs when it runs (tests/test_cli_fast.py checks it)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, NoReturn

from selfsup import clihelp
from selfsup.cli_eval import draw as _draw
from selfsup.cli_eval import eval_command as _eval
from selfsup.rundir import CHECKPOINT_DIR, CONFIG_FILE, EXPORT_DIR, RunDir  # no heavy imports: `selfsup --help` stays fast

QUIET_HELP = "no progress bars (sets SELFSUP_QUIET=1; pretrain: trainer.progress_bar=false)"
EPILOG = ("Any config key can be overridden as key.path=value, e.g. method.temperature=0.2 trainer.max_epochs=3 "
          "(selfsup config [KEY_PREFIX] lists the keys with their types, defaults, ranges and help)")


def _pretrain(args: argparse.Namespace) -> None:
    from selfsup.configread import ConfigError  # light: a missing config is said before torch is imported

    if args.config and "=" in args.config and not Path(args.config).exists():  # an override, not a file
        args.overrides, args.config = [args.config, *args.overrides], None
    if args.resume and args.config:
        raise ConfigError(f"--resume takes the run's own config ({args.resume}/config.yaml); drop "
                          f"{args.config} and pass only key=value overrides")
    if not args.resume and args.config is None:  # helper-52: said after 12 s of imports
        raise ConfigError("give a config file (e.g. configs/quickstart.yaml) or --resume RUN_DIR")

    from selfsup import distributed
    from selfsup.config import load_config
    from selfsup.pipeline import pretrain_evaluate_export
    from selfsup.train.workdir import load_run_config

    if args.resume:
        cfg = load_run_config(args.resume, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    run_dir = pretrain_evaluate_export(cfg, run_dir=args.resume or args.run_dir, resume=bool(args.resume),
                                       evaluate=not args.no_eval)
    if distributed.rank() != 0:
        return
    if cfg.eval.plots:
        _draw(run_dir)
    print(f"run directory: {run_dir}")


def check_out_dir(out: Path, holds_own: Callable[[Path], bool], what: str, flag: str,
                  run: Path | None = None) -> None:
    """Refuse an output directory whose files another kind of directory owns, before anything
    is written: one that holds a training run (config.yaml or checkpoints/) other than ``run``,
    or a non-empty directory that holds no ``what`` (``holds_own(out)`` is False). A missing or
    empty directory (hidden files aside), or one that already holds ``what``, is fine (it is rewritten).

    Raises:
        ConfigError: (one line) naming the directory, what it holds, and ``flag`` to choose another.
    """
    from selfsup.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory: writing {what} there would replace it; choose a new "
                          f"or empty {flag}")
    if not out.is_dir():
        return
    held = [name for name in (CONFIG_FILE, CHECKPOINT_DIR) if (out / name).exists()]
    if held and (run is None or out.resolve() != run.resolve()):
        raise ConfigError(f"{out} holds a training run ({' and '.join(held)}), which writing {what} there would "
                          f"mix with its files; choose another {flag}, e.g. a new folder such as {out / 'export'}")
    if not held and any(not f.name.startswith(".") for f in out.iterdir()) and not holds_own(out):
        raise ConfigError(f"{out} is a non-empty directory that holds no {what}: writing there could overwrite "
                          f"its files; choose a new or empty {flag}")


def check_export_place(source: Path, out: Path) -> None:
    """Refuse an export folder ``out`` inside a run directory that is not ``source``'s run (compare, its resume
    and its card read what is there as that run's), or inside a run's own files (``checkpoints/``, ``logs/``,
    ``features/``, ``plots/``, a folder inside ``export/``); ``RUN/export`` itself and other folders of the
    source's own run are fine.

    Raises:
        ConfigError: (one line) naming the run and a place that works."""
    from selfsup.config import ConfigError
    from selfsup.rundir import FEATURES_DIR, LOGS_DIR, PLOTS_DIR

    home = next((f for f in out.resolve().parents if RunDir(f).is_run()), None)
    if home is None:
        return
    elsewhere = source.resolve().parent / (source.resolve().name + "-export")
    if not source.resolve().is_relative_to(home):
        raise ConfigError(f"{out} is inside run {home}, whose folders compare and its resume read as that run's: "
                          f"give {source}'s export a folder of its own, e.g. {elsewhere}")
    parts = out.resolve().relative_to(home).parts
    if parts[0] in (CHECKPOINT_DIR, LOGS_DIR, FEATURES_DIR, PLOTS_DIR) or (parts[0] == EXPORT_DIR and len(parts) > 1):
        raise ConfigError(f"{out} is inside {home / parts[0]}, the run's own {parts[0]}/ folder (selfsup keeps the "
                          f"run's files there): export to {home / EXPORT_DIR} or a folder of its own, e.g. {elsewhere}")


def _export(args: argparse.Namespace) -> None:
    """model.safetensors + config.json + README.md of a run's encoder, plus the files of --format."""
    from selfsup.artifacts.card import MODEL_CARD, results_summary
    from selfsup.artifacts.exportdir import parse_formats
    from selfsup.artifacts.load import export_encoder
    from selfsup.artifacts.validate import read_card
    from selfsup.compare import read_results
    from selfsup.eval.report import baseline_options
    from selfsup.rundir import is_export_dir, results_behind, run_steps, training_pid

    formats = parse_formats(args.format)  # an unknown format fails before the run is loaded
    source, out = Path(args.run_dir), Path(args.out_dir)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: give a run directory (selfsup pretrain wrote it), a "
                                f"checkpoint or an export directory")
    from_export = is_export_dir(source)
    same = from_export and out.exists() and source.resolve() == out.resolve()  # formats added in place
    check_export_place(source, out)
    if not same:
        # never into a run directory or a folder of other files (its README.md, config.json); an export is replaced
        check_out_dir(out, is_export_dir, "export", "export directory")
        if is_export_dir(out):
            print(f"replacing the export in {out} (its files: {', '.join(sorted(p.name for p in out.iterdir()))})")
    if from_export:  # an export: add formats in place, or copy it and add them there
        from selfsup.artifacts.exportdir import export_formats

        if not same:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(source, out)
        export_formats(out, [f for f in formats if f != "safetensors"])
    else:
        from selfsup.artifacts.load import run_root

        results = None
        root = run_root(source)  # a run directory, or the run whose checkpoints/ holds the checkpoint given
        last = root is not None and source.resolve() in (root.resolve(), RunDir(root).last_checkpoint.resolve())
        res = RunDir(root).results_json if root is not None else RunDir(source).results_json
        pid = training_pid(root) if root is not None else None
        if pid is not None:  # its last checkpoint now, results of whatever came before
            print(f"note: {root} is being trained by {f'process {pid}' if pid else 'another process'}: this export "
                  f"holds its last checkpoint now, without results; export it again when its training has ended")
        elif res.is_file() and not last:  # an earlier checkpoint of the run: the run's results are not its numbers
            print(f"note: {res} holds the numbers of {root}'s last checkpoint, and {source} is another checkpoint "
                  f"file, never evaluated itself: the export carries no results (for them: selfsup eval {out})")
        elif res.is_file():  # checked before anything is written: a hand-edited number would reach the card
            rows, now = read_results(res, f"evaluate the run again (selfsup eval {root})"), run_steps(root)
            behind = results_behind(rows, now)
            if behind is None:
                results = results_summary(rows)
            else:  # a resume trained on since (--no-eval): the card would give these weights the older ones' numbers
                print(f"note: {res} holds the numbers of {root}'s weights {behind}, not of its weights now "
                      f"({now} optimiser steps): the export carries no results; for them, "
                      f"selfsup eval {root}{baseline_options(rows)}, then export again")
        out = export_encoder(source, out, results, formats)
    print(f"exported to {out}; load with selfsup.load_encoder({str(out)!r}) or timm (see {out / MODEL_CARD})")
    for fmt, rec in read_card(out)["exports"].items():
        check = (f"max abs diff {rec['max_abs_diff']:.2g} <= {rec['tolerance']:.2g}, {rec['checked_with']}"
                 if rec.get("checked_with") else rec.get("note", "not checked"))
        print(f"  {out / rec['file']} ({fmt}): features vs the timm encoder: {check}")


def _plot(args: argparse.Namespace) -> None:
    from selfsup.compare import results_note
    from selfsup.plots import RESULTS_PICTURES, plot_run

    if not Path(args.run_dir).exists():
        raise FileNotFoundError(f"{args.run_dir} does not exist: give a run directory (selfsup pretrain) or an "
                                f"evaluation folder (selfsup eval)")
    if not (RunDir(args.run_dir).results_json.is_file() or RunDir(args.run_dir).metrics_csv.is_file()):
        raise FileNotFoundError(f"{args.run_dir} holds neither logs/metrics.csv nor results.json: give a run "
                                f"directory (selfsup pretrain) or an evaluation folder (selfsup eval)")
    written = plot_run(args.run_dir)
    for path in written:
        print(path)
    note = results_note(Path(args.run_dir)) if any(p.name in RESULTS_PICTURES for p in written) else None
    if note:  # results.json of older weights, or of a run training now: the pictures say nothing of that
        print(note)
    if not written:
        print(f"nothing to draw in {args.run_dir} yet")


def _compare(args: argparse.Namespace) -> None:
    from selfsup.compare import bar_plot, check_outputs, markdown, read_entry, table_rows, to_csv, unique_targets
    from selfsup.fileio import write_text

    check_outputs(args.csv, args.plot)
    targets, repeats = unique_targets(args.targets)
    for t in repeats:
        print(f"selfsup compare: {t} gives the same results as a target before it (the same directory, or a "
              f"transfer folder and its classifier/); it is listed once", file=sys.stderr)
    header, cells = table_rows([read_entry(t) for t in targets], baselines=args.baselines)
    print(markdown(header, cells), end="")
    if args.csv:
        write_text(to_csv(header, cells), Path(args.csv))
        print(f"CSV written to {args.csv}")
    if args.plot:
        print(f"plot written to {bar_plot(header, cells, args.plot)}")


def _list(args: argparse.Namespace) -> None:
    print(clihelp.list_text(), end="")  # a static table (checked against the registries): no torch


def _config(args: argparse.Namespace) -> None:
    """Without --file or overrides: the keys under the prefix (type, default, range, help); with them: the
    resolved config (under the prefix) as YAML."""
    import yaml

    from selfsup.config import load_config, to_dict
    from selfsup.configkeys import keys_text, resolved_section, select_keys

    prefix = args.prefix or ""
    if "=" in prefix:  # an override, not a prefix
        args.overrides, prefix = [prefix, *args.overrides], ""
    if args.file is None and not args.overrides:
        print(keys_text(select_keys(prefix)), end="")
        return
    # without --file: the defaults (method simclr unless method.name=... is given) plus the overrides
    defaults = [] if args.file else ["method.name=simclr"]
    section = resolved_section(to_dict(load_config(args.file, args.overrides, defaults)), prefix)
    print(yaml.safe_dump({prefix: section} if prefix else section, sort_keys=False), end="")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``selfsup CMD: error: ...``, exit status 2): the usage
    block argparse prints first is left to ``--help``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def nonempty(what: str, optional: bool = True) -> Callable[[str], str]:
    """An argument type: the text as given; an empty (or blank) one is refused, naming ``what`` is expected
    there: ``--out ''`` was read as no ``--out`` and the results went to the default folder. ``optional``:
    an option, whose message adds that leaving it out gives its default (a positional argument has none)."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is empty: give {what}"
                                             + (" (an option left out takes its default)" if optional else ""))
        return text
    return check


path_arg = nonempty("a file or folder name")
PATH = nonempty("a file or folder name", optional=False)  # a positional path
TARGETS = nonempty("a run directory, an export directory or an evaluation folder", optional=False)
TARGET = nonempty("a run directory, an export directory, a checkpoint, pixels or random:<timm-name>", optional=False)
BASELINE = nonempty("a run directory, an export directory, a checkpoint, pixels or random:<timm-name>")
DATA_SPEC = nonempty("a detection dataset: synthetic-fmnist, deepforest, voc:DIR or coco:IMAGES_DIR,ANNOTATIONS.json")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="selfsup", description="Self-supervised pretraining and evaluation on timm encoders.")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    common = argparse.ArgumentParser(add_help=False)  # --quiet after the command too (SUPPRESS: no default there)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)  # every subcommand takes --quiet

    s = command("pretrain", help="pretrain an encoder, then evaluate and export it", epilog=EPILOG)
    s.add_argument("config", nargs="?", type=PATH, help="YAML config file (configs/*.yaml)")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides")
    s.add_argument("--resume", metavar="RUN_DIR", type=path_arg, help="continue RUN_DIR from its last checkpoint; overrides may "
                   "only lengthen the run (trainer.max_epochs/max_steps) or change how it is run, logged, evaluated")
    s.add_argument("--run-dir", type=path_arg, help="run directory (default: out_dir/name-TIMESTAMP); a new run refuses one "
                   "that already holds a run")
    s.add_argument("--no-eval", action="store_true", help="skip evaluation and export after pretraining")
    s.set_defaults(func=_pretrain)

    s = command("eval", help="kNN and linear probe (default) or detection transfer of a frozen encoder",
                epilog=EPILOG + ". Detection settings: detection.epochs, detection.image_size, "
                "detection.trainable_layers, detection.lr, detection.deformable, ... (selfsup config detection)")
    s.add_argument("target", type=TARGET, help="run directory, export directory, checkpoint, random:<timm-name> "
                   "or pixels")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides (data.*, eval.*, detection.*)")
    s.add_argument("--config", type=path_arg, help="config for data and evaluation settings (default: the run's own)")
    s.add_argument("--baseline", action="append", default=[], type=BASELINE, help="also evaluate: pixels or random:<timm-name> "
                   "(detection: random:<timm-name> only, built with the target's input channels)")
    s.add_argument("--protocol", choices=["finetune", "partial", "bitfit", "lora", "prompt"],
                   help="adapt the encoder with a linear head instead of scoring frozen features: full fine-tuning, "
                        "the last K stages (partial), biases and norms (BitFit), LoRA (pip install -e '.[transfer]': peft), visual "
                        "prompt tuning (ViTs); all labels and eval.low_shot fractions, eval.probe_seeds seeds")
    s.add_argument("--transfer", action="append", default=[], metavar="KEY=VALUE",
                   help="a transfer option (selfsup config transfer lists them), e.g. epochs=10, lr=3e-4, lora_rank=4, "
                        "partial_blocks=2, prompt_deep=true")
    s.add_argument("--task", choices=["classification", "detection"], default="classification",
                   help="classification: kNN + linear probe on data.name; detection: train Faster R-CNN + FPN "
                        "heads on the frozen encoder and report COCO mAP")
    s.add_argument("--dataset", metavar="SPEC", type=DATA_SPEC,
                   help="detection data (default: detection.dataset): synthetic-fmnist (Fashion-MNIST test objects "
                        "pasted on canvases), deepforest (tree-crown tiles; pip install --no-deps deepforest), "
                        "voc:DIR (Annotations/ + JPEGImages/, or images with same-stem .xml) or "
                        "coco:IMAGES_DIR,ANNOTATIONS.json; voc/coco are split by detection.test_fraction")
    s.add_argument("--test-dataset", metavar="SPEC", type=DATA_SPEC, help="detection: a separate voc:DIR or "
                   "coco:IMAGES_DIR,ANNOTATIONS.json test set instead of splitting --dataset")
    s.add_argument("--out", type=path_arg, help="directory for results.json, results.md and cached features "
                   "(default: the run directory, or RUN_DIR/eval-<dataset>-<hash> when data.* differs from the "
                   "run's own, or runs/eval/<target>/<dataset>-<hash>/eval-<hash of the eval settings>; --protocol: <dataset>-<hash>/transfer-<protocol>; detection: RUN_DIR/detection/<dataset>-<hash of the detection settings> or "
                   "runs/eval-detection/<target>/<dataset>-<hash>)")
    s.set_defaults(func=_eval)

    FEATURE_RTOL, FORMAT_FILES, ONNX_OPSET = clihelp.FEATURE_RTOL, clihelp.FORMAT_FILES, clihelp.ONNX_OPSET

    s = command("export", help="write the encoder as safetensors + config.json + README.md model card "
                "(timm-loadable), optionally as TorchScript, ONNX and torchvision files",
                epilog=f"Every file besides model.safetensors is run on a batch it was not traced with and "
                f"compared with the timm encoder before it is written (max abs difference of the features "
                f"<= {FEATURE_RTOL:g} x max(1, max |feature|)); config.json records each check. All take "
                f"normalised images [B, C, H, W] and return features [B, D].")
    s.add_argument("run_dir", type=PATH, help="run directory, checkpoint, or an export directory (to add --format files to it, "
                   "in place when OUT_DIR is the same folder)")
    s.add_argument("out_dir", type=PATH, help="export directory")
    s.add_argument("--format", action="append", metavar="FORMAT",
                   help=f"safetensors (default, always written: model.safetensors, config.json, README.md), "
                        f"torchscript ({FORMAT_FILES['torchscript']}, traced), onnx ({FORMAT_FILES['onnx']}, opset "
                        f"{ONNX_OPSET}, dynamic batch axis; needs pip install 'selfsup[onnx]'), torchvision "
                        f"({FORMAT_FILES['torchvision']} for torchvision.models.resnet18/50/...; plain timm ResNets "
                        f"only). Repeat the option or separate with commas: --format onnx,torchscript")
    s.set_defaults(func=_export)

    s = command("plot", help="redraw a run's pictures (training curves, kNN grid, per-stage probes) "
                "into RUN_DIR/plots/ from what is on disk, without running the encoder")
    s.add_argument("run_dir", type=PATH, help="run directory or evaluation folder")
    s.set_defaults(func=_plot)

    s = command("compare", help="one table (markdown) across runs, exports and evaluation folders: method, "
                "encoder, epochs, training minutes, every kNN, linear-probe and transfer column (mean ± sd); blanks "
                "where one lacks it")
    s.add_argument("targets", nargs="+", type=TARGETS, help="run directories, export directories, frozen evaluation "
                   "folders (selfsup eval TARGET [--out DIR]: the folder holding its results.json) and transfer "
                   "folders (selfsup eval --protocol NAME --out DIR: DIR or DIR/classifier)")
    s.add_argument("--baselines", action="store_true", help="also list the random-init and pixel rows")
    s.add_argument("--csv", metavar="FILE", type=path_arg, help="also write the table as CSV")
    s.add_argument("--plot", metavar="PNG", type=path_arg, help="also draw a bar plot (kNN, linear and all-labels transfer top-1)")
    s.set_defaults(func=_compare)

    s = command("list", help="registered methods and datasets")
    s.set_defaults(func=_list)

    s = command("config", help="every config key with its type, default, range and help; or the resolved "
                "config of a file plus overrides (YAML)",
                epilog="e.g. selfsup config optim; selfsup config method.simclr; "
                "selfsup config --file configs/quickstart.yaml trainer.max_epochs=3")
    s.add_argument("prefix", nargs="?", metavar="KEY_PREFIX", help="a section or key (optim, data.root, "
                   "method.temperature; method.NAME: one method's keys); default: every key")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides (show the resolved config)")
    s.add_argument("--file", metavar="CONFIG.yaml", type=path_arg, help="show this config file resolved (defaults filled in, "
                   "overrides applied, every value checked) as YAML")
    s.set_defaults(func=_config)
    return p


def _usage_error(command: str, message: str) -> int:
    print(f"selfsup {command}: error: {message} (see selfsup {command} --help)", file=sys.stderr)
    return 2


def one_line_errors() -> tuple[type[BaseException], ...]:
    """The errors the CLI prints as one line (``selfsup CMD: error: ...``, exit status 2). Imported only
    when an error is raised: most of them live in modules that import torch."""
    from selfsup.config import ConfigError
    from selfsup.data import DataError
    from selfsup.encoders import EncoderError
    from selfsup.fileio import WriteError
    from selfsup.losses import NonFiniteLossError
    from selfsup.registry import RegistryError
    from selfsup.safeload import LoadError
    from selfsup.train.loggers import LoggerStartError
    from selfsup.train.steps import NoStepsError
    from selfsup.train.workdir import RunDirError

    return (ConfigError, DataError, EncoderError, LoadError, RegistryError, NonFiniteLossError,
            FileNotFoundError, RunDirError, NoStepsError, WriteError, LoggerStartError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        return _usage_error(args.command, f"unrecognized arguments: {' '.join(unknown)}")
    if extra:  # key=value overrides placed after options
        if not hasattr(args, "overrides"):
            return _usage_error(args.command, f"takes no key=value overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        if getattr(args, "overrides", None):
            from selfsup.configread import check_repeated_overrides

            # the user's own, before any the CLI adds; pretrain's config and config's prefix may be one too
            first = [a for a in (getattr(args, "config", None), getattr(args, "prefix", None))
                     if isinstance(a, str) and "=" in a and not Path(a).exists()]
            check_repeated_overrides([*first, *args.overrides])
        if args.quiet:
            os.environ["SELFSUP_QUIET"] = "1"  # progress bars read it (selfsup.progress)
            if args.command == "pretrain":
                args.overrides = [*args.overrides, "trainer.progress_bar=false"]
        args.func(args)
    except Exception as err:
        from selfsup.configread import ConfigError  # light; the other errors' modules import torch

        if not isinstance(err, ConfigError) and not isinstance(err, one_line_errors()):
            raise
        print(f"selfsup {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
