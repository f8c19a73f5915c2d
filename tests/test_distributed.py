"""Two CPU processes (gloo, DDP) with negatives gathered from both ranks give the same loss
and the same encoder gradients as one process on the concatenated batch; MoCo's shuffled
BatchNorm across ranks puts every key back in place."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup import distributed
from selfsup.losses import InfoNCE
from selfsup.methods._contrastive import shuffled_forward

WORLD, B = 2, 4  # ranks, samples per rank
CASES = {
    "nt_xent": dict(query_negatives=True, symmetric=True),  # SimCLR: gathered queries and keys, both with grads
    "symmetric": dict(symmetric=True),
    "one_way": dict(),
    "teacher_keys": dict(),  # MoCo v3: keys from a frozen momentum encoder, no gradient
}


def make_data():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(WORLD * B, 6, generator=g), torch.randn(WORLD * B, 6, generator=g)
    return x1, x2, torch.randn(WORLD * B, 3, generator=g), torch.randperm(WORLD * B, generator=g)


def make_nets():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8)).double()
    teacher = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8)).double().requires_grad_(False)
    return student, teacher


def run_cases(rank: int, world: int) -> dict:
    """Every case on this rank's slice of the batch (the whole batch when world == 1)."""
    x1, x2, x_bn, perm = make_data()
    mine = slice(rank * B, (rank + 1) * B) if world > 1 else slice(None)
    x1, x2 = x1[mine].double(), x2[mine].double()
    results = {}
    for name, kwargs in CASES.items():
        student, teacher = make_nets()
        model = DistributedDataParallel(student) if world > 1 else student
        criterion = InfoNCE(0.3, gather_distributed=True, **kwargs)
        if name == "teacher_keys":
            q = model(x1)
            with torch.no_grad():
                k = teacher(x2)
        else:
            q, k = model(torch.cat([x1, x2])).chunk(2)  # one DDP forward for both views
        out = criterion(q, k)
        out.loss.backward()  # DDP averages the gradients over ranks
        results[name] = {"loss": distributed.all_reduce_mean(out.loss.detach()), "candidates": out.candidates,
                         "grads": [p.grad.clone() for p in student.parameters()]}
    bn = nn.BatchNorm1d(3, affine=False)
    results["shuffled_bn"] = shuffled_forward(bn, x_bn[mine], splits=1, perm=perm)
    linear = nn.Linear(3, 2)
    torch.manual_seed(rank)  # ranks draw different permutations; rank 0's is broadcast
    results["shuffled_linear_ok"] = torch.allclose(shuffled_forward(linear, x_bn[mine], splits=1), linear(x_bn[mine]),
                                                   atol=1e-6)
    return results


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(run_cases(rank, world), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = run_cases(0, 1)
    for name in CASES:
        want = single[name]
        for got in ranks:
            assert got[name]["candidates"] == want["candidates"], name
            assert torch.allclose(got[name]["loss"], want["loss"], rtol=1e-10, atol=1e-12), name
            for g, w in zip(got[name]["grads"], want["grads"]):
                assert torch.allclose(g, w, rtol=1e-9, atol=1e-12), name

    # shuffled BN: rank r normalised the samples perm[r*B:(r+1)*B] together, and each key is back in its row
    _, _, x_bn, perm = make_data()
    expected = torch.empty_like(x_bn)
    for r in range(WORLD):
        group = perm[r * B:(r + 1) * B]
        expected[group] = F.batch_norm(x_bn[group], None, None, training=True)
    assert torch.allclose(torch.cat([rk["shuffled_bn"] for rk in ranks]), expected, atol=1e-6)
    assert all(rk["shuffled_linear_ok"] for rk in ranks)


# --------------------------------------------------------------------------- sharded feature extraction

def _extraction_data(n_images: int):
    from selfsup.data import DataInfo, TensorImages

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 1, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImages(images, torch.arange(n_images) % 3, 3)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return ds, DataInfo(1, 8, 3, (0.5,), (0.25,)), encoder


def _extract_worker(rank: int, world: int, port: int, out_dir: str, n_images: int) -> None:
    from selfsup.eval.features import extract_features

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds, info, encoder = _extraction_data(n_images)
        feats, labels = extract_features(encoder, ds, info, batch_size=2, sharded=True)
        # uneven rows (1 on rank 0, 3 on rank 1, ...), sent 8 bytes per all-gather: one row at a time
        rows = distributed.gather_to_rank0(torch.arange(rank * 5, rank * 5 + 1 + 2 * rank)[:, None], max_bytes=8)
        # 3, 0 (and 1) rows 4 wide, 48 bytes per all-gather: the rank with no rows must chunk like the others
        share = list(distributed.shard(n_images))
        wide = distributed.gather_to_rank0(torch.full(([3, 0, 1][rank], 4), float(rank)), max_bytes=48)
        torch.save({"feats": feats, "labels": labels, "rows": rows, "share": share, "wide": wide},
                   f"{out_dir}/extract{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,n_images", [(2, 11), (3, 2)])  # uneven shares; more ranks than images
def test_feature_extraction_is_sharded_and_gathered_on_rank0_in_dataset_order(tmp_path, world, n_images):
    from selfsup.eval.features import extract_features

    mp.spawn(_extract_worker, args=(world, free_port(), str(tmp_path), n_images), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"extract{r}.pt", weights_only=False) for r in range(world)]
    ds, info, encoder = _extraction_data(n_images)
    want, want_labels = extract_features(encoder, ds, info, batch_size=4)  # one process
    shares = [r["share"] for r in ranks]
    assert sum(shares, []) == list(range(n_images)) and all(s == sorted(s) for s in shares)
    torch.testing.assert_close(ranks[0]["feats"], want)
    assert torch.equal(ranks[0]["labels"], want_labels)
    for r in ranks[1:]:  # the other ranks keep only their own share
        torch.testing.assert_close(r["feats"], want[r["share"]] if r["share"] else want[:0])
    assert ranks[0]["rows"].flatten().tolist() == [0, 5, 6, 7] + ([10, 11, 12, 13, 14] if world == 3 else [])
    assert ranks[0]["wide"][:, 0].tolist() == [0.0] * 3 + ([2.0] if world == 3 else [])


@pytest.mark.parametrize("env, zero", [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True),
                                       ({"RANK": "3", "LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "1"}, False),
                                       ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"SLURM_PROCID": "2"}, False),
                                       ({"SLURM_PROCID": "0", "RANK": ""}, True)])
def test_one_reading_of_the_launchers_rank_for_run_dirs_and_transfer_output(monkeypatch, env, zero):
    """Before the process group exists, rank 0 is read from the launcher's variables in one place: the run
    directory's owner (pretraining) and the process that prints and writes a transfer run (which read
    different variables before: a SLURM rank above 0 printed, a Lightning-started process owned nothing)."""
    from selfsup import distributed
    from selfsup.train.workdir import RUN_DIR_ENV, owns_run_dir

    for var in distributed.LAUNCHER_RANK_VARS + (RUN_DIR_ENV,):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.launcher_rank_zero() is zero and distributed.is_rank_zero() is zero and owns_run_dir() is zero
    monkeypatch.setenv(RUN_DIR_ENV, "/somewhere")  # a process Lightning's launcher started: never the owner
    assert owns_run_dir() is False
