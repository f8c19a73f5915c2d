"""Binary NCE and the memory bank of instance discrimination (Wu et al. 2018): the loss
against its closed form computed by hand, the frozen Z estimate, uniform noise, the
momentum update, and the npid training step."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import NCE, MemoryBank, nce_loss
from selfsup.methods.npid import bank_knn_accuracy, bank_scores

from conftest import TINY_INFO as INFO  # noqa: E402


def by_hand(pos, noise, z, n):
    """-1/B sum_b [log h(pos_b) + sum_j log(1 - h(noise_bj))], h = P / (P + m/n), P = exp(s)/Z."""
    m = len(noise[0])
    total = 0.0
    for p, row in zip(pos, noise):
        h = math.exp(p) / z / (math.exp(p) / z + m / n)
        total += math.log(h)
        for s in row:
            h = math.exp(s) / z / (math.exp(s) / z + m / n)
            total += math.log(1 - h)
    return -total / len(pos)


def test_loss_matches_closed_form_by_hand():
    pos, noise = [1.0, 0.5], [[0.2, -0.3], [2.0, 0.0]]
    got = nce_loss(torch.tensor(pos, dtype=torch.float64), torch.tensor(noise, dtype=torch.float64),
                   math.log(5.0), num_data=10)
    assert math.isclose(float(got), by_hand(pos, noise, 5.0, 10), rel_tol=1e-12)


def test_bank_pipeline_matches_closed_form_by_hand():
    """Four bank rows, one feature, its own row and two noise rows: scores w^T v / tau by hand."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    v = torch.tensor([[0.8, 0.6]])
    tau, z = 0.5, 7.0
    pos, noise = bank_scores(v, bank, torch.tensor([3]), torch.tensor([[0, 2]]))
    assert torch.allclose(pos, torch.tensor([0.96]))  # 0.8*0.6 + 0.6*0.8
    assert torch.allclose(noise, torch.tensor([[0.8, -0.8]]))
    got = nce_loss(pos / tau, noise / tau, math.log(z), num_data=4)
    assert math.isclose(float(got), by_hand([0.96 / tau], [[0.8 / tau, -0.8 / tau]], z, 4), rel_tol=1e-6)


def test_z_is_estimated_on_the_first_batch_then_frozen():
    g = torch.Generator().manual_seed(0)
    nce = NCE(num_data=100, z_batches=1)
    with pytest.raises(RuntimeError, match="Z has not been estimated"):
        nce.eval()(torch.zeros(2), torch.zeros(2, 3))
    nce.train()
    noise = torch.randn(4, 8, generator=g)
    nce(torch.randn(4, generator=g), noise)
    expected = math.log(100 * float(noise.double().exp().mean()))
    assert math.isclose(float(nce.log_z), expected, rel_tol=1e-5) and nce.frozen
    for _ in range(3):  # later batches, however different, leave Z alone
        out = nce(torch.randn(4, generator=g), 5 + torch.randn(4, 8, generator=g))
        assert math.isclose(float(out.log_z), expected, rel_tol=1e-5)
    assert int(nce.z_seen) == 1


def test_z_over_several_batches_is_the_mean_of_their_estimates():
    g = torch.Generator().manual_seed(1)
    nce = NCE(num_data=50, z_batches=2)
    batches = [torch.randn(3, 5, generator=g) for _ in range(3)]
    for noise in batches:
        nce(torch.zeros(3), noise)
    zs = [50 * float(b.double().exp().mean()) for b in batches[:2]]
    assert math.isclose(float(nce.log_z), math.log(sum(zs) / 2), rel_tol=1e-5)


def test_noise_is_uniform_over_the_bank():
    bank = MemoryBank(10, 4)
    counts = torch.bincount(bank.sample((200, 500), torch.Generator().manual_seed(0)).flatten(), minlength=10)
    assert counts.sum() == 100_000
    assert (counts - 10_000).abs().max() < 500  # ~5 standard deviations


def test_memory_bank_momentum_update_is_exact():
    torch.manual_seed(0)
    bank = MemoryBank(6, 3, momentum=0.5)
    before = bank.bank.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(6))
    f = torch.randn(2, 3)
    bank.update(torch.tensor([4, 1]), f)
    expected = F.normalize(0.5 * before[[4, 1]] + 0.5 * F.normalize(f, dim=1), dim=1)
    assert torch.allclose(bank.bank[[4, 1]], expected)
    assert torch.equal(bank.bank[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    with pytest.raises(IndexError, match="memory-bank size"):
        bank.update(torch.tensor([6]), f[:1])


@pytest.mark.parametrize("num_noise", [5, 20])  # 5*4 < 50 rows: gather the rows; 20*4 >= 50: score them all
def test_bank_scores_both_paths_agree_with_gradients(num_noise):
    g = torch.Generator().manual_seed(2)
    bank = F.normalize(torch.randn(50, 4, generator=g, dtype=torch.float64), dim=1)
    v = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx, noise_idx = torch.tensor([7, 0, 49]), torch.randint(50, (3, num_noise), generator=g)
    pos, noise = bank_scores(v, bank, idx, noise_idx)
    assert torch.allclose(pos, (v * bank[idx]).sum(1))
    assert torch.allclose(noise, torch.einsum("bf,bmf->bm", v, bank[noise_idx]))
    grad = torch.autograd.grad(pos.sum() + noise.square().sum(), v)[0]
    ref = torch.autograd.grad((v * bank[idx]).sum() + torch.einsum("bf,bmf->bm", v, bank[noise_idx]).square().sum(),
                              v)[0]
    assert torch.allclose(grad, ref)


def test_bank_knn_accuracy_by_hand():
    sims = torch.tensor([[0.1, 0.9, 0.8, 0.99], [0.9, 0.2, 0.3, 0.95]])
    bank_labels = torch.tensor([0, 1, 1, -1])  # entry 3 is unlabelled
    # query 0 (entry 1 is itself): neighbours 2 (label 1) and 0 (label 0), 2 is closer -> 1: right
    # query 1 (entry 0 is itself): neighbours 2 and 1, both label 1 -> 1: wrong (label 0)
    acc = bank_knn_accuracy(sims, bank_labels, torch.tensor([1, 0]), torch.tensor([1, 0]), k=2,
                            temperature=0.1, num_classes=2)
    assert float(acc) == 0.5
    assert bank_knn_accuracy(sims, bank_labels, torch.tensor([-1, -1]), torch.tensor([1, 0]), 2, 0.1, 2) is None


def test_npid_step_needs_indices_and_updates_only_their_bank_rows(tiny_config):
    from selfsup.train.module import PretrainModule

    torch.manual_seed(0)
    module = PretrainModule(tiny_config("method.num_noise=16", method="npid"), INFO)
    assert len(module.method.bank.bank) == INFO.num_samples  # one row per training image, sized from the data
    npid = module.method
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    with pytest.raises(ValueError, match="indices"):
        npid.training_step(images)
    with pytest.raises(IndexError, match="memory-bank size"):
        npid.training_step(images, indices=torch.tensor([0, 1, 2, INFO.num_samples]))
    before = npid.bank.bank.clone()
    idx = torch.tensor([3, 9, 0, 255])
    out = npid.training_step(images, indices=idx, labels=torch.tensor([1, 2, 3, 4]))
    out["loss"].backward()
    changed = (npid.bank.bank != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted(idx.tolist())
    assert npid.bank_labels[idx].tolist() == [1, 2, 3, 4]
    assert npid.nce.frozen and math.isclose(float(out["log_z"]), float(npid.nce.log_z))
    assert float(out["mi_bound"]) <= math.log(1 + 16)  # the positive among its 16 noise rows
    assert "bank_knn_acc" in out and 0 <= float(out["bank_knn_acc"]) <= 1


def test_npid_bank_size_must_match_the_data(tiny_config):
    from selfsup.train.module import PretrainModule

    with pytest.raises(ValueError, match="bank_size=20 but the training set has 256"):
        PretrainModule(tiny_config("method.bank_size=20", method="npid"), INFO)


def test_npid_softmax_objective_is_the_exact_softmax_over_the_bank(tiny_config):
    """objective=softmax (Wu et al. eq. 2): -log exp(v.w_i/T) / sum_j exp(v.w_j/T) over every bank
    row, written as a per-row loop over the bank as it was before the step's update."""
    from selfsup.train.module import PretrainModule

    torch.manual_seed(0)
    module = PretrainModule(tiny_config("method.objective=softmax", "method.temperature=0.1", method="npid"), INFO)
    npid = module.method.train()
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    idx = torch.tensor([5, 17, 100, 2])
    bank = npid.bank.bank.clone()
    torch.manual_seed(1)
    out = npid.training_step(images, indices=idx, labels=torch.tensor([0, 1, 2, 3]))
    torch.manual_seed(1)  # the same augmentation draws, to rebuild the features
    v = F.normalize(npid.head(npid.encoder(npid.augment(images))), dim=1).detach()
    losses = []
    for b in range(4):
        scores = [float(v[b] @ bank[j]) / 0.1 for j in range(len(bank))]
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        losses.append(log_z - scores[int(idx[b])])
    assert math.isclose(float(out["loss"]), sum(losses) / 4, rel_tol=1e-5)
    assert math.isclose(float(out["mi_bound"]), math.log(len(bank)) - sum(losses) / 4, rel_tol=1e-5, abs_tol=1e-5)
    assert npid.nce is None and not any("log_z" in k for k in npid.state_dict())  # no NCE state
    out["loss"].backward()
    assert npid.head.weight.grad is not None and npid.head.weight.grad.abs().sum() > 0
    assert not torch.equal(npid.bank.bank[idx], bank[idx])  # rows updated after scoring


def _concentrated_bank(n: int, d: int, spread: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit direction mu [d] and n unit rows scattered around it [n, d] (cos with mu about
    1 / sqrt(1 + spread^2)): the bank after one epoch of nearly coinciding features."""
    mu = F.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    return mu, F.normalize(mu + spread * torch.randn(n, d, generator=g, dtype=torch.float64) / math.sqrt(d), dim=1)


def test_z_fixed_on_the_random_bank_pushes_every_feature_off_a_concentrated_bank():
    """The mechanism of NPID's collapse measured on Fashion-MNIST with the authors' own recipe
    (benchmarks/results/npid_authors.md). Z is estimated on the first batch, while the bank is
    random: log Z = log n + 1 / (2 d tau^2) (the mean of exp(s) for s ~ N(0, 1 / (d tau^2))).
    Once the bank's rows concentrate around one direction mu (features nearly coincide at
    init, so the bank does after an epoch), the noise posteriors h_j, computed here by hand,
    sum to far more than 1, so the NCE gradient pushes every feature off mu together, many
    times harder than the positive (weight <= 1) pulls it to its own row. The exact softmax
    (eq. 2) weighs noise and positive equally (sum 1 each): its push along mu is at most
    the spread of the rows' cosines with mu."""
    g = torch.Generator().manual_seed(0)
    n, d, m, b, tau = 5000, 128, 4096, 16, 0.1
    random_bank = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    first = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    noise_idx = torch.randint(n, (b, m), generator=g)
    nce = NCE(n).double()
    nce(torch.zeros(b, dtype=torch.float64), torch.einsum("bd,bmd->bm", first, random_bank[noise_idx]) / tau)
    assert math.isclose(float(nce.log_z), math.log(n) + 1 / (2 * d * tau**2), abs_tol=0.03)

    mu, bank = _concentrated_bank(n, d, 0.75, g)  # rows at cos ~0.8 with mu
    v = F.normalize(mu + 0.75 * torch.randn(b, d, generator=g, dtype=torch.float64) / math.sqrt(d), dim=1)
    v.requires_grad_(True)
    idx = torch.arange(b)
    pos = (v * bank[idx]).sum(1) / tau  # [B]
    noise = torch.einsum("bd,bmd->bm", v, bank[noise_idx]) / tau  # [B, M]
    loss = nce(pos, noise).loss
    (grad,) = torch.autograd.grad(loss * b, v)  # per-sample gradients [B, d]

    p_noise = noise.detach().exp() / float(nce.log_z.exp())  # P(j|v) = exp(s) / Z  [B, M]
    mass = (p_noise / (p_noise + m / n)).sum(1)  # sum_j h_j, the paper's h = P / (P + m P_n)  [B]
    assert float(mass.min()) > 50  # noise weight vs the positive's <= 1
    along_mu = grad @ mu  # [B]; gradient descent moves v by -grad: off mu when > 0
    assert bool((along_mu > 0).all())
    assert float(along_mu.min()) > 0.5 * float(mass.min()) / tau  # rows' cos with mu >= 0.5

    every = v @ bank.T / tau  # [B, n]: the exact softmax over every row
    (soft,) = torch.autograd.grad(F.cross_entropy(every, idx) * b, v)
    cos_mu = bank @ mu  # [n]
    bound = float(cos_mu.max() - cos_mu.min()) / tau
    assert float((soft @ mu).abs().max()) <= bound
    assert float((soft @ mu).abs().mean()) < float(along_mu.mean()) / 50
