"""NPID as its authors run it, beside selfsup's ``npid``, on Fashion-MNIST; then the
differences one at a time.

The authors' recipe (Wu, Xiong, Yu, Lin 2018; their code, lemniscate.pytorch, read to
understand it -- everything below is written here from the paper and that reading):

- model: the CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool, BasicBlocks
  [2, 2, 2, 2] at strides 1, 2, 2, 2, 1x1 projection shortcuts, PyTorch's default init,
  BatchNorm gamma 1), global average pool, ``Linear(512, 128)``, L2 normalisation;
- augmentation: RandomResizedCrop scale (0.2, 1), ColorJitter (0.4, 0.4, 0.4, 0.4),
  RandomGrayscale 0.2, horizontal flip (on in their ImageNet script, commented out in
  their CIFAR script), per-channel normalisation;
- objective: NCE with m = 4096 noise rows drawn uniformly from a memory bank of one row
  per image; ``P(i|v) = exp(w_i.v / T) / Z``, Z = n * mean of exp(w.v / T) over the first
  batch's scored rows, then fixed; ``h = P / (P + m / n)``; loss
  ``-mean_b [log h(pos) + sum_j log(1 - h(noise_j))]``; bank rows start uniform in
  ``+-sqrt(3 / d)`` and are updated ``w_i <- normalize(0.5 w_i + 0.5 v_i)`` after scoring;
- SGD lr 0.03, momentum 0.9, weight decay 5e-4 on every parameter, constant lr for the
  first 80 epochs; T 0.1 and batch 128 in their CIFAR script (0.07 / 256 for ImageNet).

Adaptation to 28x28 grayscale: one input channel; the stages see 28, 14, 7, 4 pixels and
the pool is global (their ``avg_pool2d(4)`` on CIFAR's 4x4 map is global too); the stage
widths are ``--width`` x (1, 2, 4, 8) (theirs: 64; the CPU default here is 16). Hue,
saturation and grayscale are no-ops on one channel (as in torchvision).

Every run trains on the same seeded subset for the same epochs in a plain loop (one
thread) and is scored by selfsup's weighted kNN (selfsup.eval.knn) on the full 10k test
split against the training subset: ``knn_enc`` on the encoder's pooled features (what the
methods benchmark scores), ``knn_head`` on the 128-d normalised features (what the paper
scores), each before training (``init_*``, the same weights) and after.

Recipes (``--runs``): ``authors``; ``selfsup`` (selfsup's own NPID method with
configs/npid-fashion-mnist.yaml and NCE, via benchmarks/methods.training_loop, constant lr)
and ``selfsup-softmax``; ``selfsup-like`` (this loop with every selfsup choice); and
``authors`` / ``selfsup-like`` with one knob changed (``A+<knob>`` / ``S+<knob>``); see
RECIPES. Each run prints its per-epoch monitors and a JSON row, appended to ``--json``;
``--table`` prints the markdown table of benchmarks/results/npid_authors.md from it.

    OMP_NUM_THREADS=1 python benchmarks/npid_authors.py --subset 5000 --epochs 8 --runs authors,selfsup
    python benchmarks/npid_authors.py --table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from selfsup.config import DataConfig, load_config  # noqa: E402
from selfsup.data import BatchAugment, CleanTransform, build_dataset, subset  # noqa: E402
from selfsup.encoders import create_encoder  # noqa: E402
from selfsup.eval.knn import knn_evaluate  # noqa: E402
from selfsup.methods.npid import NPIDAugment  # noqa: E402

KNN_PAIRS = [(200, 0.1), (20, 0.07)]


# ----------------------------------------------------------------------------- the authors' model
class Block(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class CifarResNet18(nn.Module):
    """[B, C, H, W] -> pooled [B, 8 * width]: 3x3 stride-1 stem, no max-pool."""

    def __init__(self, in_chans: int = 1, width: int = 64) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        stages, cin = [], w[0]
        for cout, stride in zip(w, (1, 2, 2, 2)):
            stages += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = w[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))  # [B, 8w]


# ----------------------------------------------------------------------------- augmentations
class AuthorsAugment(nn.Module):
    """uint8 [B, C, H, W] -> normalised views, one torchvision pipeline per image."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], scale: tuple[float, float],
                 flip: bool) -> None:
        super().__init__()
        from torchvision.transforms import v2 as T

        steps = [T.RandomResizedCrop(size, scale=scale, antialias=True), T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                 T.RandomGrayscale(0.2)]
        self.per_image = T.Compose(steps + ([T.RandomHorizontalFlip()] if flip else []))
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = torch.stack([self.per_image(img) for img in images]).float().div_(255)  # [B, C, S, S]
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------- NCE from the paper
def nce_from_paper(pos: Tensor, noise: Tensor, z: float, n: int) -> Tensor:
    """Eq. 4-7 in probability form: ``P = exp(s) / Z`` for scores s = w.v / T; ``pos`` [B],
    ``noise`` [B, m]; ``h = P / (P + m / n)``; loss -mean(log h_pos + sum log(1 - h_noise))."""
    m = noise.shape[1]
    p_pos, p_noise = pos.exp() / z, noise.exp() / z  # [B], [B, m]
    mp = m / n
    log_h = torch.log(p_pos / (p_pos + mp))  # [B]
    log_1mh = torch.log(mp / (p_noise + mp))  # [B, m]
    return -(log_h + log_1mh.sum(1)).mean()


# ----------------------------------------------------------------------------- one recipe
@dataclass(frozen=True)
class Recipe:
    """One training recipe; defaults are the authors' (CIFAR script, batch from the issue)."""

    arch: str = "authors"  # authors: CifarResNet18; timm: selfsup's slim resnet18 (npid config)
    width: int = 16  # the authors' 64; 16 fits a 1-thread CPU budget (1.7 s per batch of 256)
    zero_init_last: bool = False  # timm only: zero gamma of each block's last BN (timm's default True)
    augment: str = "authors"  # authors: torchvision per image; selfsup: selfsup's BatchAugment (NPIDAugment)
    crop_min: float = 0.2
    flip: bool = True
    lr: float = 0.03
    weight_decay: float = 5e-4
    wd_norm_bias: bool = True  # authors: decay every parameter; selfsup (timm groups): not norms / biases
    warmup_cosine: bool = False  # selfsup pretrain's schedule: 0.5 epoch warmup, cosine to 0
    batch_size: int = 256
    temperature: float = 0.1
    num_noise: int = 4096
    bank_momentum: float = 0.5
    bank_init: str = "uniform"  # uniform: +-sqrt(3/d) (authors); sphere: normalised Gaussian (selfsup)
    z_mode: str = "first"  # first: Z from the first batch, then fixed (authors); batch: re-estimated every batch
    objective: str = "nce"  # nce (eq. 4-7); softmax: the exact non-parametric softmax over every bank row (eq. 2)
    selfsup: bool = False  # run selfsup's own NPID method instead (configs/npid-fashion-mnist.yaml)
    overrides: tuple[str, ...] = ()  # config overrides for the selfsup run


AUTHORS = Recipe()
SELFSUP_LIKE = Recipe(arch="timm", zero_init_last=True, augment="selfsup", crop_min=0.3, wd_norm_bias=False,
                      bank_init="sphere")
RECIPES: dict[str, Recipe] = {
    "authors": AUTHORS,
    "selfsup": Recipe(selfsup=True, overrides=("method.objective=nce",)),  # the paper's NCE
    "selfsup-softmax": Recipe(selfsup=True, overrides=("method.objective=softmax",)),  # eq. 2, no Z
    "selfsup-like": SELFSUP_LIKE,  # this script's loop with every selfsup choice
    # the authors' recipe with one selfsup choice
    "A+timm": replace(AUTHORS, arch="timm", zero_init_last=False),
    "A+timm-zero": replace(AUTHORS, arch="timm", zero_init_last=True),
    "A+aug": replace(AUTHORS, augment="selfsup", crop_min=0.3),
    "A+wd": replace(AUTHORS, wd_norm_bias=False),
    "A+sched": replace(AUTHORS, warmup_cosine=True),
    "A+sphere": replace(AUTHORS, bank_init="sphere"),
    "A+T07": replace(AUTHORS, temperature=0.07),
    "A+b128": replace(AUTHORS, batch_size=128),
    "A+zbatch": replace(AUTHORS, z_mode="batch"),
    "S+zbatch": replace(SELFSUP_LIKE, z_mode="batch"),
    "S+zbatch+fair": replace(SELFSUP_LIKE, z_mode="batch", zero_init_last=False),
    "S+softmax+fair": replace(SELFSUP_LIKE, objective="softmax", zero_init_last=False),
    # selfsup's choices with one of the authors'
    "S+authors-arch": replace(SELFSUP_LIKE, arch="authors", zero_init_last=False),
    "S+fair-init": replace(SELFSUP_LIKE, zero_init_last=False),
    "S+aug": replace(SELFSUP_LIKE, augment="authors", crop_min=0.2),
}


class Model(nn.Module):
    """Encoder -> pooled [B, D]; head -> L2-normalised [B, 128]."""

    def __init__(self, r: Recipe, in_chans: int) -> None:
        super().__init__()
        if r.arch == "authors":
            self.encoder: nn.Module = CifarResNet18(in_chans, r.width)
        else:
            kwargs = {"output_stride": 16, "channels": [32, 64, 128, 256],
                      "zero_init_last": r.zero_init_last}
            self.encoder = create_encoder("resnet18", in_chans, kwargs)
        self.head = nn.Linear(self.encoder.num_features, 128)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)  # [B, D]
        return h, F.normalize(self.head(h), dim=1)  # [B, D], [B, 128]


def param_groups(model: nn.Module, r: Recipe) -> list[dict[str, Any]]:
    if r.wd_norm_bias:
        return [{"params": list(model.parameters()), "weight_decay": r.weight_decay}]
    flat = [p for p in model.parameters() if p.ndim <= 1]
    rest = [p for p in model.parameters() if p.ndim > 1]
    return [{"params": rest, "weight_decay": r.weight_decay}, {"params": flat, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def features(model: nn.Module, images: Tensor, clean: nn.Module, batch: int = 1000) -> tuple[Tensor, Tensor]:
    """Encoder [N, D] and head [N, 128] features of clean images, eval mode."""
    model.eval()
    hs, vs = [], []
    for chunk in images.split(batch):
        h, v = model(clean(chunk))
        hs.append(h)
        vs.append(v)
    model.train()
    return torch.cat(hs), torch.cat(vs)


def knn_scores(model: nn.Module, data: dict[str, Any]) -> dict[str, float]:
    out = {}
    tr, te = features(model, data["train_x"], data["clean"]), features(model, data["test_x"], data["clean"])
    for name, a, b in (("enc", tr[0], te[0]), ("head", tr[1], te[1])):
        res = knn_evaluate(a, data["train_y"], b, data["test_y"], KNN_PAIRS, 10)
        out[f"knn_{name}_k200"] = res["k=200,T=0.1"]["top1"]
        out[f"knn_{name}_k20"] = res["k=20,T=0.07"]["top1"]
    return out


def run_authors_loop(r: Recipe, data: dict[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    info = data["info"]
    model = Model(r, info.in_chans)
    if r.augment == "authors":
        augment: nn.Module = AuthorsAugment(info.image_size, info.mean, info.std, (r.crop_min, 1.0), r.flip)
    else:
        augment = BatchAugment(NPIDAugment(crop_scale=(r.crop_min, 1.0), hflip=0.5 if r.flip else 0.0),
                               info.mean, info.std, info.image_size)
    n, d = len(data["train_x"]), 128
    if r.bank_init == "uniform":
        stdv = 1 / math.sqrt(d / 3)
        bank = torch.rand(n, d) * 2 * stdv - stdv
    else:
        bank = F.normalize(torch.randn(n, d), dim=1)
    init = knn_scores(model, data)
    opt = torch.optim.SGD(param_groups(model, r), lr=r.lr, momentum=0.9)
    steps_per_epoch = n // r.batch_size
    total, warmup = epochs * steps_per_epoch, round(0.5 * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    z = None
    curve, step, t0 = [], 0, time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)[: steps_per_epoch * r.batch_size].view(steps_per_epoch, -1)
        losses, pos_cos, vmean, mass = [], [], [], []
        for idx in perm:
            if r.warmup_cosine:
                for grp in opt.param_groups:
                    grp["lr"] = r.lr * lr_factor(step, total, warmup)
            _, v = model(augment(data["train_x"][idx]))  # [B, 128]
            noise_idx = torch.randint(n, (len(idx), r.num_noise), generator=g)  # [B, m]
            rows = bank[torch.cat([idx[:, None], noise_idx], 1)]  # [B, 1 + m, 128]
            s = torch.einsum("bkd,bd->bk", rows, v) / r.temperature  # [B, 1 + m]
            if z is None or r.z_mode == "batch":
                z = float(s.detach().exp().mean()) * n
            if r.objective == "softmax":
                loss = F.cross_entropy(v @ bank.T / r.temperature, idx)  # [B, n] scores, own row is the class
            else:
                loss = nce_from_paper(s[:, 0], s[:, 1:], z, n)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                p_noise = s[:, 1:].detach().exp() / z  # [B, m]
                mass.append(float((p_noise / (p_noise + r.num_noise / n)).sum(1).mean()))  # sum_j h_j
                pos_cos.append(float((v * bank[idx]).sum(1).mean()))
                bank[idx] = F.normalize(r.bank_momentum * bank[idx] + (1 - r.bank_momentum) * v.detach(), dim=1)
                vmean.append(float(v.mean(0).norm()))
            losses.append(loss.item())
            step += 1
        curve.append({"epoch": epoch, "loss": round(sum(losses) / len(losses), 2),
                      "pos_cos": round(sum(pos_cos) / len(pos_cos), 3), "vmean": round(sum(vmean) / len(vmean), 3),
                      "noise_mass": round(sum(mass) / len(mass), 2)})
        print(json.dumps(curve[-1]), flush=True)
    train_s = time.perf_counter() - t0
    return {"init": init, "final": knn_scores(model, data), "curve": curve,
            "log_z": None if z is None else round(math.log(z), 3), "train_s": round(train_s, 1), "steps": step}


def run_selfsup(r: Recipe, data: dict[str, Any], epochs: int, seed: int, subset_n: int) -> dict[str, Any]:
    """selfsup's own NPID (configs/npid-fashion-mnist.yaml) in benchmarks/methods.training_loop
    (constant lr, as that loop has no scheduler), same subset and seed."""
    from methods import training_loop

    cfg = load_config(ROOT / "configs" / "npid-fashion-mnist.yaml",
                      [f"seed={seed}", f"data.subset={subset_n}", "trainer.online_probe=false",
                       f"data.batch_size={r.batch_size}", *r.overrides])
    module, n, loop = training_loop(cfg)
    method = module.method
    model = Model.__new__(Model)
    nn.Module.__init__(model)
    model.encoder, model.head = method.encoder, method.head
    init = knn_scores(model, data)
    curve, losses, pos_cos, vmean, t0, epoch = [], [], [], [], time.perf_counter(), 0
    bank_before = method.bank.bank.clone()
    for step in loop:
        if step.epoch != epoch:
            curve.append({"epoch": epoch, "loss": round(sum(losses) / len(losses), 2),
                          "pos_cos": round(sum(pos_cos) / len(pos_cos), 3), "vmean": round(sum(vmean) / len(vmean), 3)})
            print(json.dumps(curve[-1]), flush=True)
            losses, pos_cos, vmean, epoch = [], [], [], step.epoch
        if step.epoch >= epochs:
            break
        idx = step.batch[2]
        new = method.bank.bank[idx]  # after the update: 0.5 old + 0.5 v, normalised
        v = F.normalize(new * 2 - bank_before[idx], dim=1)  # not exact after normalisation; monitor only
        pos_cos.append(float((new * bank_before[idx]).sum(1).mean()))  # how far the row moved
        vmean.append(float(v.mean(0).norm()))
        losses.append(float(step.out["loss"]))
        bank_before = method.bank.bank.clone()
    train_s = time.perf_counter() - t0
    return {"init": init, "final": knn_scores(model, data), "curve": curve,
            "log_z": None if method.nce is None else round(float(method.nce.log_z), 3),
            "train_s": round(train_s, 1), "steps": step.index, "note": "pos_cos here: cosine of each updated bank row with its previous value"}


def load_data(subset_n: int, seed: int) -> dict[str, Any]:
    cfg = DataConfig(name="fashion-mnist")
    train = subset(build_dataset(cfg, "train"), subset_n, seed)
    test = build_dataset(cfg, "test")
    info = train.info()
    return {"info": info, "train_x": train.images, "train_y": train.labels, "test_x": test.images,
            "test_y": test.labels, "clean": CleanTransform(info.mean, info.std, info.image_size)}


def series(curve: list[dict[str, Any]], key: str) -> str:
    return " ".join(f"{e[key]:g}" for e in curve)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per run (kNN before/after on encoder and head features, loss curve)."""
    lines = ["| run | differs from the authors' recipe | steps (epochs) | kNN enc k=200 init -> final | "
             "kNN enc k=20 init -> final | kNN head k=200 init -> final | loss per epoch | pos cos per epoch | batch mean-feature norm | "
             "NCE noise mass (sum h_j) |",
             "|---|---|---:|---:|---:|---:|---|---|---|---|"]
    base = dataclasses.asdict(AUTHORS)
    for r in rows:
        diff = ", ".join(f"{k}={v}" for k, v in r["recipe"].items()
                         if k in base and base[k] != v and k != "overrides")
        if r["recipe"]["selfsup"]:
            diff = "selfsup's npid method, configs/npid-fashion-mnist.yaml " + " ".join(r["recipe"]["overrides"])
        i, f, c = r["init"], r["final"], r["curve"]
        nce = r["recipe"].get("objective", "nce") == "nce"
        mass = series(c, "noise_mass") if c and "noise_mass" in c[0] and nce else ""
        lines.append(f"| {r['run']} | {diff or '-'} | {r['steps']} ({r['epochs']}) | "
                     f"{i['knn_enc_k200']:.1f} -> {f['knn_enc_k200']:.1f} | {i['knn_enc_k20']:.1f} -> {f['knn_enc_k20']:.1f} | "
                     f"{i['knn_head_k200']:.1f} -> {f['knn_head_k200']:.1f} | "
                     f"{series(c, 'loss')} | {series(c, 'pos_cos')} | {series(c, 'vmean')} | {mass} |")
    return "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="authors,selfsup")
    ap.add_argument("--set", action="append", default=[], help="recipe field override for every run, e.g. width=16")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "npid_authors.json"),
                    help="results file: a JSON list, each run appended")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --json and exit")
    args = ap.parse_args()
    if args.table:
        print(table(read_rows(Path(args.json))), end="")
        return
    torch.set_num_threads(1)
    data = load_data(args.subset, args.seed)
    for name in args.runs.split(","):
        r = RECIPES[name]
        for kv in args.set:
            k, v = kv.split("=", 1)
            r = replace(r, **{k: type(getattr(r, k))(v) if not isinstance(getattr(r, k), bool) else v == "true"})
        print(f"== {name}: {r}", flush=True)
        res = (run_selfsup(r, data, args.epochs, args.seed, args.subset) if r.selfsup
               else run_authors_loop(r, data, args.epochs, args.seed))
        row = {"run": name, "subset": args.subset, "epochs": args.epochs, "seed": args.seed,
               "recipe": dataclasses.asdict(r), **res}
        print(json.dumps(row), flush=True)
        path = Path(args.json)
        path.write_text(json.dumps([*read_rows(path), row], indent=1) + "\n")


if __name__ == "__main__":
    main()
