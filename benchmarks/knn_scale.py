"""kNN at scale: float16 train features streamed from disk into faiss, against the
in-memory torch search other SSL libraries use.

Data (synthetic, seeded): ``--n`` train rows and ``--queries`` query rows of dimension
``--dim`` drawn around ``--centres`` random unit directions (Gaussian noise of norm about
``--noise``), L2-normalised, stored as float16 safetensors (the feature cache's format).
By default there is one centre per 244 train rows (4,096 at 1,000,000), at every ``--n``,
so smoke tests keep the structure of the full run: most of a query's k = 200 neighbours
share its cluster (features with less cluster structure need a larger nprobe).
Variants, each in a fresh subprocess so that its peak RSS (``VmHWM``) is its own:

(a) exact: selfsup.eval.knn exact search streamed from the file in chunks
    (a flat inner-product index per chunk, top-k merged by faiss.ResultHeap);
(b) ivf: an IVF index (k-means on a seeded sample, rows added chunk by chunk), searched
    at every ``--nprobes`` value; recall@k is measured against (a). ``--nlist`` defaults
    to 512 (the library's default is round(sqrt(N) / 2), 500 at 1M rows): kNN evaluation
    builds the index for one search, whose cost is dominated by assigning every row to
    a cell (N x nlist similarities) and k-means (about 256 nlist^2 x iterations), so far
    fewer cells than the round(4 sqrt(N)) of indexes searched many times;
(c) torch: every train row loaded as float32, then ``--torch-query-chunk`` queries at a
    time: one matmul against all of train and ``topk`` (DINO's and solo-learn's kNN).

"import" is the RSS of a subprocess that only imports torch, faiss and selfsup: the floor
under every peak. Targets: exact no slower than torch; IVF (k-means + adding + search, at
the smallest nprobe with recall@k >= 0.95) at least 5x faster than exact. Times are medians
over ``--repeats`` runs (variants alternate). The data file is read from the page cache.
Prints JSON and writes benchmarks/results/knn_scale.{json,md}.

    python benchmarks/knn_scale.py                              # 1,000,000 x 512, 10,000 queries, k=200
    python benchmarks/knn_scale.py --n 100000 --queries 2000    # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ssl"))

from selfsup.eval.features import FeatureFile  # noqa: E402
from selfsup.eval.knn import (IndexOptions, add_rows, faiss_gpu_available, index_search, load_unit,  # noqa: E402
                              new_ivf, plan_index, search_with_plan, set_nprobe, train_ivf)
from selfsup.fileio import save_tensors, write_json, write_text  # noqa: E402

RECALL_TARGET = 0.95
SPEEDUP_TARGET = 5.0


# --------------------------------------------------------------------------- data


def clustered_rows(n: int, centres: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """``n`` unit rows ``[n, D]`` float16: a random centre each plus Gaussian noise of norm ~``noise``."""
    g = torch.Generator().manual_seed(seed)
    d = centres.shape[1]
    pick = torch.randint(0, len(centres), (n,), generator=g)
    x = centres[pick] + noise * torch.randn(n, d, generator=g) / d ** 0.5  # [n, D]
    return F.normalize(x, dim=1).half()


def write_data(directory: Path, n: int, queries: int, dim: int, centres: int, noise: float, seed: int,
               chunk: int = 100_000) -> tuple[Path, Path]:
    """Train and query float16 files (generated chunk by chunk, one seed per chunk)."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)  # [C, D]
    train = torch.cat([clustered_rows(min(chunk, n - s), c, noise, seed + 1 + i)
                       for i, s in enumerate(range(0, n, chunk))])  # [N, D] float16
    paths = directory / "train.safetensors", directory / "queries.safetensors"
    save_tensors({"features": train}, paths[0])
    del train
    save_tensors({"features": clustered_rows(queries, c, noise, seed)}, paths[1])
    return paths


# --------------------------------------------------------------------------- variants (one per subprocess)


def peak_rss_mb() -> float:
    """This process's peak resident set: ``VmHWM`` of its own address space. (``ru_maxrss`` is
    not used on Linux: it survives exec, so a child reports at least its parent's RSS at fork.)"""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kib / 1024, 1)


def run_exact(train: FeatureFile, queries: FeatureFile, k: int, ids_dir: Path) -> dict[str, Any]:
    t = time.perf_counter()
    _, idx, plan = search_with_plan(train, queries, k, IndexOptions(kind="exact"))
    seconds = time.perf_counter() - t
    save_tensors({"ids": idx}, ids_dir / "exact.safetensors")
    return {"seconds": seconds, "index": plan.describe()}


def run_ivf(train: FeatureFile, queries: FeatureFile, k: int, ids_dir: Path, nlist: int | None,
            nprobes: list[int], codes: str) -> dict[str, Any]:
    # the stages of knn.build_ivf, timed one by one, on the device search_with_plan would use
    plan = plan_index(train.shape[0], train.shape[1], k, IndexOptions(kind="ivf", nlist=nlist or None, codes=codes),
                      faiss_gpu_available())
    t0 = time.perf_counter()
    index = new_ivf(plan)
    train_ivf(index, train, plan)
    t1 = time.perf_counter()
    add_rows(index, train, plan)
    t2 = time.perf_counter()
    xq = load_unit(queries, plan.chunk_rows)  # [Q, D]
    searches = {}
    for nprobe in nprobes:
        set_nprobe(index, nprobe)
        t = time.perf_counter()
        _, ids = index_search(index, xq, plan.k, plan.query_rows)  # [Q, k]
        searches[str(nprobe)] = time.perf_counter() - t
        save_tensors({"ids": torch.from_numpy(ids)}, ids_dir / f"ivf-{nprobe}.safetensors")
    return {"train_seconds": t1 - t0, "add_seconds": t2 - t1, "search_seconds": searches,
            "index": plan.describe()}


def run_torch(train: FeatureFile, queries: FeatureFile, k: int, ids_dir: Path, chunk: int) -> dict[str, Any]:
    t = time.perf_counter()
    xb = F.normalize(train.load(), dim=1)  # [N, D] float32, all in memory
    xq = F.normalize(queries.load(), dim=1)  # [Q, D]
    t_load = time.perf_counter()
    ids = torch.empty(len(xq), min(k, len(xb)), dtype=torch.long)
    for s in range(0, len(xq), chunk):
        ids[s:s + chunk] = (xq[s:s + chunk] @ xb.T).topk(ids.shape[1], dim=1).indices  # [c, N] -> [c, k]
    seconds = time.perf_counter() - t
    save_tensors({"ids": ids}, ids_dir / "torch.safetensors")
    return {"seconds": seconds, "load_seconds": t_load - t, "query_chunk": chunk}


def variant_main(args: argparse.Namespace) -> None:
    data = Path(args.data_dir)
    train, queries = FeatureFile(data / "train.safetensors"), FeatureFile(data / "queries.safetensors")
    if args.variant == "import":
        out: dict[str, Any] = {}
    elif args.variant == "exact":
        out = run_exact(train, queries, args.k, data)
    elif args.variant == "ivf":
        out = run_ivf(train, queries, args.k, data, args.nlist, args.nprobes, args.codes)
    else:
        out = run_torch(train, queries, args.k, data, args.torch_query_chunk)
    print(json.dumps({**out, "peak_rss_mb": peak_rss_mb()}))


# --------------------------------------------------------------------------- driver


def run_variant(name: str, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", name, "--data-dir", str(data_dir),
           "--k", str(args.k), "--nprobes", ",".join(map(str, args.nprobes)), "--codes", args.codes,
           "--torch-query-chunk", str(args.torch_query_chunk), "--nlist", str(args.nlist)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx top-k  intersect  exact top-k| / k (id -1, a slot IVF left
    empty, is never a hit)."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(a[a >= 0], b, assume_unique=True)) / k for a, b in zip(approx, exact)]))


def load_ids(path: Path) -> np.ndarray:
    return load_file(str(path))["ids"].numpy()  # [Q, k]


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarise(runs: dict[str, list[dict[str, Any]]], recalls: dict[str, float], torch_recall: float,
              args: argparse.Namespace) -> dict[str, Any]:
    exact_s = med([r["seconds"] for r in runs["exact"]])
    torch_s = med([r["seconds"] for r in runs["torch"]])
    ivf = runs["ivf"]
    build_s = med([r["train_seconds"] + r["add_seconds"] for r in ivf])
    sweep = []
    for p in args.nprobes:
        search_s = med([r["search_seconds"][str(p)] for r in ivf])
        sweep.append({"nprobe": p, "recall_at_k": round(recalls[str(p)], 4), "search_seconds": search_s,
                      "total_seconds": round(build_s + search_s, 3),
                      "speedup_vs_exact": round(exact_s / (build_s + search_s), 2),
                      "search_speedup_vs_exact": round(exact_s / search_s, 2)})
    ok = [s for s in sweep if s["recall_at_k"] >= RECALL_TARGET]
    chosen = ok[0] if ok else None
    rss = {name: med([r["peak_rss_mb"] for r in rs]) for name, rs in runs.items()}
    return {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
                    "load_average_at_start": args.load_average},
        "data": {"train": args.n, "queries": args.queries, "dim": args.dim, "k": args.k, "centres": args.centres,
                 "noise": args.noise, "seed": args.seed, "storage": "float16 safetensors",
                 "kind": "synthetic clustered: Gaussian noise around random unit centres, L2-normalised"},
        "peak_rss_mb": rss,
        "exact": {"seconds": exact_s, "index": runs["exact"][0]["index"]},
        "torch": {"seconds": torch_s, "load_seconds": med([r["load_seconds"] for r in runs["torch"]]),
                  "query_chunk": args.torch_query_chunk, "recall_vs_exact": round(torch_recall, 4)},
        "ivf": {"index": ivf[0]["index"], "train_seconds": med([r["train_seconds"] for r in ivf]),
                "add_seconds": med([r["add_seconds"] for r in ivf]), "build_seconds": build_s, "sweep": sweep,
                "chosen_nprobe": chosen["nprobe"] if chosen else None},
        "targets": {
            "exact_over_torch_time": {"value": round(exact_s / torch_s, 3), "target": "<= 1.0",
                                      "met": exact_s <= torch_s},
            "ivf_speedup_at_recall_0.95": {"value": chosen["speedup_vs_exact"] if chosen else None,
                                           "target": f">= {SPEEDUP_TARGET} (k-means + add + search)",
                                           "met": bool(chosen) and chosen["speedup_vs_exact"] >= SPEEDUP_TARGET},
        },
    }


def markdown(res: dict[str, Any]) -> str:
    d, e, t, v, rss = res["data"], res["exact"], res["torch"], res["ivf"], res["peak_rss_mb"]
    idx = v["index"]
    lines = [
        f"kNN search, {d['train']:,} x {d['dim']} train features ({d['storage']}, {d['kind']}; "
        f"{d['centres']:,} centres, noise {d['noise']}, seed {d['seed']}), {d['queries']:,} queries, k = {d['k']}; "
        f"{res['machine']['threads']} threads (1-minute load average {res['machine']['load_average_at_start']} "
        f"at start), median of {res['machine']['repeats']} run(s), "
        f"peak RSS per variant in a fresh process (imports alone: {rss['import']} MB; the train features "
        f"would take {d['train'] * d['dim'] * 4 / 2**20:,.0f} MB as float32).",
        "",
        "| variant | seconds | peak RSS (MB) | recall@k vs exact | notes |",
        "|---|---:|---:|---:|---|",
        f"| (a) exact faiss, streamed | {e['seconds']} | {rss['exact']} | 1 | "
        f"{e['index']['chunk_rows']:,}-row chunks, ResultHeap merge |",
        f"| (c) torch matmul + topk, in memory | {t['seconds']} | {rss['torch']} | {t['recall_vs_exact']} | "
        f"float32 train loaded ({t['load_seconds']} s), {t['query_chunk']} queries per matmul |",
    ]
    for s in v["sweep"]:
        mark = " (chosen)" if s["nprobe"] == v["chosen_nprobe"] else ""
        lines.append(f"| (b) IVF nprobe={s['nprobe']}{mark} | {s['total_seconds']} | {rss['ivf']} | "
                     f"{s['recall_at_k']} | search {s['search_seconds']} s; {s['speedup_vs_exact']}x exact "
                     f"({s['search_speedup_vs_exact']}x search only) |")
    tg = res["targets"]
    ivf_t = tg["ivf_speedup_at_recall_0.95"]
    lines += [
        "",
        f"IVF: nlist {idx['nlist']}, {idx['codes']} codes, k-means ({idx['kmeans_iters']} iterations) on "
        f"{idx['train_rows']:,} sampled rows {v['train_seconds']} s, adding {v['add_seconds']} s; the IVF rows' "
        f"seconds include both. IVF peak RSS is that of the whole nprobe sweep.",
        "",
        "| target | value | goal | met |",
        "|---|---:|---|---|",
        f"| exact time / torch time | {tg['exact_over_torch_time']['value']} | {tg['exact_over_torch_time']['target']} "
        f"| {'yes' if tg['exact_over_torch_time']['met'] else 'no'} |",
        f"| IVF speed-up over exact at recall@k >= {RECALL_TARGET} | {ivf_t['value']} | {ivf_t['target']} | "
        f"{'yes' if ivf_t['met'] else 'no'} |",
    ]
    return "\n".join(lines) + "\n"


def driver_main(args: argparse.Namespace) -> None:
    args.load_average = round(os.getloadavg()[0], 2)  # other work on the machine skews every time
    with tempfile.TemporaryDirectory(prefix="knn_scale_") as tmp:
        data_dir = Path(args.data_dir or tmp)
        if not (data_dir / "train.safetensors").exists():
            print(f"writing {args.n:,} x {args.dim} float16 train features to {data_dir}", file=sys.stderr)
            write_data(data_dir, args.n, args.queries, args.dim, args.centres, args.noise, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {"import": [], "exact": [], "ivf": [], "torch": []}
        for rep in range(args.repeats):
            order = ["import", "exact", "ivf", "torch"] if rep % 2 == 0 else ["import", "torch", "ivf", "exact"]
            for name in order:
                print(f"[repeat {rep + 1}/{args.repeats}] {name}", file=sys.stderr)
                runs[name].append(run_variant(name, args, data_dir))
        exact = load_ids(data_dir / "exact.safetensors")
        recalls = {str(p): recall_at_k(load_ids(data_dir / f"ivf-{p}.safetensors"), exact) for p in args.nprobes}
        torch_recall = recall_at_k(load_ids(data_dir / "torch.safetensors"), exact)
    res = summarise(runs, recalls, torch_recall, args)
    print(json.dumps(res, indent=2))
    out = Path(args.out)
    write_json(res, out / "knn_scale.json")
    write_text(markdown(res), out / "knn_scale.md")


def positive_ints(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; an argparse type, so bad input is a usage error."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, not {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="train rows")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--centres", type=int, default=0,
                    help="cluster centres of the synthetic data (0: one per 244 train rows, 4,096 at 1,000,000)")
    ap.add_argument("--noise", type=float, default=1.0, help="norm of the noise around a unit centre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nlist", type=int, default=512,
                    help="IVF cells (0: the library default round(sqrt(N) / 2)); see the docstring")
    ap.add_argument("--nprobes", type=positive_ints, default=[1, 2, 4, 8, 16, 32], help="comma-separated")
    ap.add_argument("--codes", choices=("fp16", "flat"), default="fp16", help="IVF storage")
    ap.add_argument("--torch-query-chunk", type=int, default=128, help="queries per matmul in the torch baseline")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data-dir", default=None, help="keep (or reuse) the generated data here; default: a temp dir")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--variant", choices=("import", "exact", "ivf", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.centres = args.centres or max(1, round(args.n * 4096 / 1_000_000))
    if args.variant:
        variant_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
