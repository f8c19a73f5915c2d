"""Command line: ``selfsup pretrain | eval | export | list``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = "Any config key can be overridden as key.path=value, e.g. method.temperature=0.2 trainer.max_epochs=3"


def _pretrain(args: argparse.Namespace) -> None:
    from selfsup.config import load_config
    from selfsup.train.run import finish_run, load_run_config, pretrain

    if args.config and "=" in args.config and not Path(args.config).exists():  # an override, not a file
        args.overrides, args.config = [args.config, *args.overrides], None
    if args.resume:
        if args.config:
            raise SystemExit("selfsup pretrain --resume takes the run's own config; pass only key=value overrides")
        cfg = load_run_config(args.resume, args.overrides)
        run_dir = pretrain(cfg, run_dir=args.resume, resume=True)
    else:
        if args.config is None:
            raise SystemExit("selfsup pretrain: give a config file (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        run_dir = pretrain(cfg, run_dir=args.run_dir)
    if cfg.eval.after_pretrain and not args.no_eval:
        print("\n" + finish_run(run_dir, cfg))
    print(f"run directory: {run_dir}")


def _eval(args: argparse.Namespace) -> None:
    from selfsup.config import apply_override, build_config, load_config
    from selfsup.eval.evaluate import evaluate
    from selfsup.eval.report import markdown_table
    from selfsup.export import is_export_dir, read_card
    from selfsup.fileio import write_json, write_text
    from selfsup.train.run import CONFIG_FILE, load_run_config

    target = Path(args.target)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif (target / CONFIG_FILE).is_file():
        cfg = load_run_config(target, args.overrides)
    elif is_export_dir(target):
        base = read_card(target)["training_config"]
        for ov in args.overrides:
            apply_override(base, ov)
        cfg = build_config(base)
    else:
        cfg = load_config(None, ["method.name=simclr", *args.overrides])
    out = Path(args.out) if args.out else (target if (target / CONFIG_FILE).is_file() else Path("runs") / "eval")
    rows = [evaluate(t, cfg, out / "features") for t in [args.target, *args.baseline]]
    write_json(rows, out / "results.json")
    table = markdown_table(rows)
    write_text(table, out / "results.md")
    print("\n" + table)
    print(f"results written to {out / 'results.json'} and {out / 'results.md'}")


def _export(args: argparse.Namespace) -> None:
    import json

    from selfsup.export import export_encoder, results_summary

    results = None
    res = Path(args.run_dir) / "results.json"
    if res.is_file():
        results = results_summary(json.loads(res.read_text()))
    out = export_encoder(args.run_dir, args.out_dir, results)
    print(f"exported to {out}; load with selfsup.load_encoder({str(out)!r}) or timm (see {out / 'config.json'})")


def _list(args: argparse.Namespace) -> None:
    from selfsup.data import DATASETS
    from selfsup.methods import METHODS

    print("methods:")
    for name in METHODS.names():
        doc = (METHODS.get(name).__module__ and sys.modules[METHODS.get(name).__module__].__doc__ or "").strip()
        print(f"  {name:14s} {doc.splitlines()[0] if doc else ''}")
    print("datasets:")
    for name in DATASETS.names():
        doc = (DATASETS.get(name).__doc__ or "").strip()
        print(f"  {name:14s} {doc.splitlines()[0] if doc else ''}")
    print("encoders: any timm model name (encoder.name=...), e.g. resnet18, resnet50, vit_small_patch16_224;\n"
          "  list them with: python -c \"import timm; print(timm.list_models('*resnet*'))\"")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised pretraining and evaluation on timm encoders.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pretrain", help="pretrain an encoder, then evaluate and export it", epilog=EPILOG)
    s.add_argument("config", nargs="?", help="YAML config file (configs/*.yaml)")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    s.add_argument("--run-dir", help="run directory (default: out_dir/name-TIMESTAMP)")
    s.add_argument("--no-eval", action="store_true", help="skip evaluation and export after pretraining")
    s.set_defaults(func=_pretrain)

    s = sub.add_parser("eval", help="kNN and linear probe of a frozen encoder", epilog=EPILOG)
    s.add_argument("target", help="run directory, export directory, checkpoint, random:<timm-name> or pixels")
    s.add_argument("overrides", nargs="*", help="key.path=value overrides (data.*, eval.*)")
    s.add_argument("--config", help="config for data and evaluation settings (default: the run's own)")
    s.add_argument("--baseline", action="append", default=[], help="also evaluate: pixels or random:<timm-name>")
    s.add_argument("--out", help="directory for results.json, results.md and cached features")
    s.set_defaults(func=_eval)

    s = sub.add_parser("export", help="write the encoder as safetensors + config.json (timm-loadable)")
    s.add_argument("run_dir", help="run directory or checkpoint")
    s.add_argument("out_dir", help="export directory")
    s.set_defaults(func=_export)

    s = sub.add_parser("list", help="registered methods and datasets")
    s.set_defaults(func=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    from selfsup.config import ConfigError
    from selfsup.data import DataError
    from selfsup.encoders import EncoderError
    from selfsup.export import LoadError
    from selfsup.registry import RegistryError
    from selfsup.train.module import NonFiniteLossError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:  # key=value overrides placed after options
        if not hasattr(args, "overrides"):
            parser.error(f"'selfsup {args.command}' takes no key=value overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except (ConfigError, DataError, EncoderError, LoadError, RegistryError, NonFiniteLossError,
            FileNotFoundError) as err:
        print(f"selfsup {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
