"""Imports go one way: every module of selfsup imports only its own layer and the layers below it (the
order documented at the top of selfsup/__init__.py), and each module imports first in a fresh interpreter
(an import circle shows up as an ImportError when the wrong module of the circle comes first)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "ssl" / "selfsup"

# Bottom first. A name stands for the module and everything under it; the longest name that matches wins.
LAYERS = [
    ["selfsup.registry", "selfsup.fileio", "selfsup.distributed", "selfsup.version", "selfsup.rundir",
     "selfsup.safeload", "selfsup.statedict", "selfsup.schedules", "selfsup.progress", "selfsup.memory"],
    ["selfsup.config", "selfsup.configread", "selfsup.transferconfig", "selfsup.configkeys"],
    ["selfsup.data"],
    ["selfsup.encoders", "selfsup.heads", "selfsup.losses", "selfsup.monitors"],
    ["selfsup.methods"],
    ["selfsup.train"],
    ["selfsup.eval", "selfsup.plots", "selfsup.detection"],
    ["selfsup.artifacts", "selfsup.export", "selfsup.compare", "selfsup.pipeline", "selfsup.transfer"],
    ["selfsup.cli", "selfsup.cli_eval", "selfsup.clihelp", "selfsup"],  # the package itself: its lazy load_encoder re-exports artifacts
]
# Beside the order: evaluation needs an encoder, never the training code.
FORBIDDEN = [("selfsup.eval", "selfsup.train"), ("selfsup.detection", "selfsup.train")]


def _within(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def _layer(module: str) -> int:
    names = [name for layer in LAYERS for name in layer if _within(module, name) and name != "selfsup"]
    if not names:
        assert module == "selfsup", f"{module} is in no layer: add it to LAYERS here and to selfsup/__init__.py"
        names = ["selfsup"]
    best = max(names, key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The selfsup modules ``path`` imports, at module level or in a function (``from selfsup import x``
    counts as importing ``selfsup.x`` when x is a module; relative imports are resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "selfsup" or m.startswith("selfsup.")}


def _upward_imports() -> dict[tuple[str, str], str]:
    modules = _modules()
    upward = {}
    for name, path in modules.items():
        for target in _imported(path, name, modules):
            if target != name and _layer(target) > _layer(name):
                upward[(name, target)] = f"layer {_layer(name)} imports layer {_layer(target)}"
            elif any(_within(name, low) and _within(target, high) for low, high in FORBIDDEN):
                upward[(name, target)] = "evaluation imports training"
    return upward


def test_no_module_imports_a_higher_layer():
    upward = _upward_imports()
    assert not upward, f"imports against the layer order of selfsup/__init__.py: {upward}"


def test_the_layer_check_sees_imports_at_every_level(tmp_path):
    """The ast walk counts function-level, `from selfsup import module` and relative imports."""
    modules = {"selfsup.data": Path(), "selfsup.data.x": Path(), "selfsup.distributed": Path()}
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from selfsup.methods import METHODS\n"
                   "from selfsup import distributed\nfrom . import x\nfrom ..cli import main\n")
    got = _imported(src, "selfsup.data.y", modules)
    assert got == {"selfsup.methods", "selfsup.distributed", "selfsup.data.x", "selfsup.cli"}
    assert _layer("selfsup.methods") > _layer("selfsup.data") > _layer("selfsup.config") > _layer("selfsup.rundir")
    assert _layer("selfsup.artifacts.card") > _layer("selfsup.eval.knn") > _layer("selfsup.train.run")


# Third-party packages that selfsup imports, loaded before the fork so that each child only pays for selfsup's
# own modules; they cannot take part in a circle of selfsup's.
PRELOAD = "import torch, torchvision, timm, lightning, safetensors.torch, yaml, numpy, faiss, sklearn"
FORK_EACH = """
import importlib, os, sys, traceback
{preload}
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:  # a child that has imported nothing of selfsup: `name` comes first
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", " ".join(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(_modules())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", FORK_EACH.format(preload=PRELOAD), *names], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "FAILED", res.stderr[-3000:]
    assert len(names) > 40 and "selfsup.artifacts.exportdir" in names  # the walk found the package


def test_loading_an_export_imports_no_training_code(tmp_path):
    """selfsup.load_encoder of an export directory never imports selfsup.train (nor Lightning)."""
    from test_export_timm import v1_export

    export, _ = v1_export("resnet", tmp_path / "export")
    code = ("import sys, selfsup\n"
            f"selfsup.load_encoder({str(export)!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith(('selfsup.train', 'lightning'))))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"


def test_only_rundir_spells_the_run_directorys_layout():
    """Every module asks selfsup.rundir.RunDir for a run directory's paths: none joins their names itself."""
    import re

    joined = re.compile(r'/ "(config\.yaml|last\.ckpt|results\.json|results\.md|data_info\.json|bad_files\.txt|'
                        r'\.lock|features|export|logs|checkpoints|detection|model\.safetensors|config\.json)"')
    found = [f"{_module_name(p)}: {m.group(0)}" for p in PACKAGE.rglob("*.py") if p.name != "rundir.py"
             for m in joined.finditer(p.read_text())]
    assert not found, found
    assert joined.search('run_dir / "last.ckpt"') and joined.search('out / "results.json"')  # the pattern works


def test_config_resolves_a_method_without_importing_methods():
    """config (layer 2) never imports methods: in a fresh interpreter `import selfsup.config` loads no method;
    the first method.name lookup runs the loader selfsup/__init__.py installed, and each method's config
    class is the one the method registry holds."""
    code = ("import sys\nfrom selfsup.config import METHOD_CONFIGS, load_config\n"
            "before = sorted(m for m in sys.modules if m.startswith(('selfsup.methods', 'torch')))\n"
            "cfg = load_config(None, ['method.name=moco', 'method.temperature=0.3'])\n"
            "from selfsup.methods import METHODS\n"
            "same = all(METHOD_CONFIGS.get(n) is METHODS.get(n).Config for n in METHODS.names())\n"
            "print(before, type(cfg.method) is METHODS.get('moco').Config, cfg.method.temperature, same,\n"
            "      METHOD_CONFIGS.names() == METHODS.names())")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "ssl"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["[]", "True", "0.3", "True", "True"]


def test_registry_loader_runs_once_at_the_first_lookup_and_on_register_sees_each_entry():
    from selfsup.registry import Registry, RegistryError

    seen, loads = [], []
    reg = Registry("thing", on_register=lambda name, obj: seen.append((name, obj)))
    reg.set_loader(lambda: loads.append(1) or reg.register("a")(1))
    assert loads == [] and seen == []
    assert reg.get("a") == 1 and "a" in reg and reg.names() == ["a"] and loads == [1]
    reg.register("b")(2)
    assert seen == [("a", 1), ("b", 2)] and loads == [1]
    with pytest.raises(RegistryError, match="unknown thing 'c'"):
        reg.get("c")


def test_evaluation_reads_a_path_target_only_through_the_loader_it_is_given(tmp_path, tiny_config):
    """eval never imports artifacts: a path target needs the caller's `load` (artifacts.load.load_encoder)."""
    from torch import nn

    from selfsup.eval.target import resolve_target
    from selfsup.safeload import LoadError
    from conftest import TINY_INFO

    cfg = tiny_config()
    with pytest.raises(LoadError, match=r"is a path: pass load=selfsup.artifacts.load.load_encoder"):
        resolve_target(str(tmp_path), cfg, lambda: TINY_INFO)
    encoder = nn.Identity()
    encoder.selfsup_info = TINY_INFO
    target = resolve_target(str(tmp_path), cfg, lambda: TINY_INFO, load=lambda path: encoder)
    assert target.encoder is encoder and target.info is TINY_INFO and target.kind == "pretrained"
