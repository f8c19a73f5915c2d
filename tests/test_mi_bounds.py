"""MI bounds on one critic score matrix against direct numpy evaluations of their formulas
(Poole et al. 2019; Song & Ermon 2020), their orderings, their gradients, and the critics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.losses.mi_bounds import (BOUNDS, ConcatCritic, SeparableCritic, dv, infonce, js, js_divergence_bound,
                                      nwj, smile)


def _scores(b: int = 6, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(b, b, generator=g, dtype=torch.float64)
    return s + 3 * torch.eye(b, dtype=torch.float64)  # positives score higher


def _pairs(s: np.ndarray) -> tuple[list[float], list[float]]:
    """(joint pairs, marginal pairs) by explicit loops."""
    b = len(s)
    return [s[i][i] for i in range(b)], [s[i][j] for i in range(b) for j in range(b) if i != j]


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_each_bound_equals_its_formula_evaluated_directly():
    s = _scores()
    a = s.numpy()
    joint, marg = _pairs(a)
    b = len(a)
    e_p = sum(joint) / b
    e_q_exp = sum(math.exp(v) for v in marg) / len(marg)
    ref = {
        "infonce": math.log(b) + sum(a[i][i] - math.log(sum(math.exp(v) for v in a[i])) for i in range(b)) / b,
        "nwj": e_p - e_q_exp / math.e,
        "dv": e_p - math.log(e_q_exp),
        # JS-trained critic read through NWJ at f + 1: E_p[f] + 1 - E_q[e^f]
        "js": e_p + 1 - e_q_exp,
        "smile": e_p - math.log(sum(math.exp(min(max(v, -1.5), 1.5)) for v in marg) / len(marg)),
    }
    got = {"infonce": infonce(s).mi, "nwj": nwj(s).mi, "dv": dv(s)[0].mi, "js": js(s).mi,
           "smile": smile(s, tau=1.5).mi}
    assert set(got) == set(BOUNDS)
    for name in BOUNDS:
        assert abs(float(got[name]) - ref[name]) < 1e-10, name
    # the losses: minus the bound (InfoNCE: the cross entropy, log B minus the bound), except JS and
    # SMILE, which train on the JS divergence bound
    js_ref = sum(-_softplus(-v) for v in joint) / b - sum(_softplus(v) for v in marg) / len(marg)
    assert abs(float(js(s).loss) + js_ref) < 1e-10 and abs(float(smile(s).loss) + js_ref) < 1e-10
    assert abs(float(infonce(s).loss) - (math.log(b) - ref["infonce"])) < 1e-10
    for name, bound in (("nwj", nwj(s)), ("dv", dv(s)[0])):
        assert abs(float(bound.loss) + ref[name]) < 1e-10, name


@pytest.mark.parametrize("seed", range(20))
def test_orderings_hold_on_any_scores(seed):
    s = _scores(b=2 + seed % 7, seed=seed, scale=0.5 + seed)  # scales up to 20: far from any optimum
    assert float(nwj(s).mi) <= float(dv(s)[0].mi) + 1e-12  # x / e >= log x
    assert float(infonce(s).mi) <= math.log(len(s)) + 1e-12
    assert abs(float(smile(s, tau=None).mi) - float(dv(s)[0].mi)) < 1e-12
    assert abs(float(smile(s, tau=1e6).mi) - float(dv(s)[0].mi)) < 1e-12


def test_infonce_saturates_at_log_b_even_for_a_perfect_critic():
    s = 100.0 * torch.eye(64, dtype=torch.float64)
    assert abs(float(infonce(s).mi) - math.log(64)) < 1e-9 and float(dv(s)[0].mi) > 90


def test_at_the_true_log_density_ratio_the_estimators_read_the_true_mi():
    """1-d Gaussians with correlation rho: I = -log(1 - rho^2) / 2 and the critic log p(x,y)/(p(x)p(y))
    in closed form. DV, NWJ at f + 1 (= the JS reading) read I; NWJ at f reads I - 1/e."""
    rho, b = 0.6, 1500
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(b, generator=g, dtype=torch.float64)
    xi, yj = x[:, None], y[None, :]
    log_ratio = (-0.5 * math.log(1 - rho**2) - (xi**2 - 2 * rho * xi * yj + yj**2) / (2 * (1 - rho**2))
                 + (xi**2 + yj**2) / 2)  # [B, B]
    truth = -0.5 * math.log(1 - rho**2)  # 0.2231 nats
    assert abs(float(dv(log_ratio)[0].mi) - truth) < 0.03
    assert abs(float(js(log_ratio).mi) - truth) < 0.03
    assert abs(float(js(log_ratio, nwj_offset=0.0).mi) - (truth - 1 / math.e)) < 0.03
    assert abs(float(nwj(log_ratio + 1).mi) - truth) < 0.03


def test_gradients_dv_mine_js_and_smile():
    s = _scores().requires_grad_(True)
    marg_mask = ~torch.eye(len(s), dtype=torch.bool)

    def grad(loss):
        (g,) = torch.autograd.grad(loss, s)
        return g

    # MINE: the gradient of E_p[f] - E_q[e^f] / ema_new, with ema_new the moving average (carried as its log)
    log_ema = torch.tensor(math.log(2.5), dtype=torch.float64)
    bound, new_log_ema = dv(s, log_ema, momentum=0.9)
    partition = torch.exp(s.detach()[marg_mask]).mean()
    new_ema = 0.9 * 2.5 + 0.1 * float(partition)
    assert new_log_ema.dtype == torch.float64 and abs(float(new_log_ema) - math.log(new_ema)) < 1e-12
    expected = -(torch.eye(len(s)) / len(s) - marg_mask * torch.exp(s.detach()) / marg_mask.sum() / new_ema)
    assert torch.allclose(grad(bound.loss), expected.double(), atol=1e-12)
    assert abs(float(bound.mi) - float(dv(s)[0].mi)) < 1e-12  # the value is DV's
    # momentum 0: the moving average is the batch's partition, and MINE's gradient is DV's
    assert torch.allclose(grad(dv(s, log_ema, momentum=0.0)[0].loss), grad(dv(s)[0].loss), atol=1e-12)
    # adding c to every score and to the log average: the same gradient, the log average moved by c
    # (c = 1000: e^f overflows float64, an average held as a number turned inf and the ratio 0)
    for c in (30.0, 1000.0):
        shifted, new_shifted = dv(s + c, log_ema + c, momentum=0.9)
        assert torch.allclose(grad(shifted.loss), expected.double(), atol=1e-12), c
        assert abs(float(new_shifted) - (math.log(new_ema) + c)) < 1e-9 and abs(float(shifted.mi - bound.mi)) < 1e-9
    # JS and SMILE train on the JS divergence bound
    assert torch.allclose(grad(js(s).loss), grad(-js_divergence_bound(s)))
    assert torch.allclose(grad(smile(s).loss), grad(-js_divergence_bound(s)))


@torch.no_grad()
def test_critics_score_every_pair():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3), torch.randn(5, 4)
    sep = SeparableCritic(3, 4, hidden=16, embed=8)
    loop = torch.tensor([[float(sep.g(x[i]) @ sep.h(y[j])) for j in range(5)] for i in range(5)])
    assert torch.allclose(sep(x, y), loop, atol=1e-5)
    cat = ConcatCritic(3, 4, hidden=16, layers=2)
    first = torch.nn.Linear(7, 16)  # the first layer on the concatenation [x, y]
    first.weight.copy_(torch.cat([cat.x_in.weight, cat.y_in.weight], 1))
    first.bias.copy_(cat.x_in.bias)
    loop = torch.tensor([[float(cat.out(torch.relu(first(torch.cat([x[i], y[j]]))))) for j in range(5)]
                         for i in range(5)])
    assert torch.allclose(cat(x, y), loop, atol=1e-5)
    # the MLP of Poole et al. with layers=2: input, 2 hidden, output layer; the input one split in x_in, y_in
    assert sum(isinstance(m, torch.nn.Linear) for m in cat.modules()) == 5


@pytest.mark.parametrize("shape", [(3, 4), (1, 1), (4,)])
def test_a_score_matrix_that_is_not_square_is_refused(shape):
    with pytest.raises(ValueError, match=r"scores must be a square \[B, B\] matrix with B >= 2"):
        nwj(torch.zeros(shape))


def test_a_rectangular_matrix_with_positive_columns_splits_joint_and_marginal_pairs():
    """[B, N] scores with the positive of row i in column target[i] (a queue of negatives), and -inf
    entries that are no candidates (SimCLR's anchor against itself), against explicit loops."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 3, 5, 1])
    s[:, 2] = float("-inf")  # not a candidate of any row (as an anchor against itself)
    a = s.numpy()
    joint = [a[i][int(target[i])] for i in range(4)]
    marg = [a[i][j] for i in range(4) for j in range(6) if j != int(target[i]) and np.isfinite(a[i][j])]
    assert len(marg) == 4 * 5 - 4
    e_q = sum(math.exp(v) for v in marg) / len(marg)
    assert abs(float(nwj(s, target).mi) - (np.mean(joint) - e_q / math.e)) < 1e-10
    assert abs(float(dv(s, target=target)[0].mi) - (np.mean(joint) - math.log(e_q))) < 1e-10
    rows = [math.log(5) + a[i][int(target[i])] - math.log(sum(math.exp(v) for v in a[i] if np.isfinite(v)))
            for i in range(4)]
    assert abs(float(infonce(s[[0, 1, 3]], target[[0, 1, 3]]).mi) - np.mean([rows[0], rows[1], rows[3]])) < 1e-10
    with pytest.raises(ValueError, match="unknown MI bound 'mine': choose from infonce, nwj, js, dv, smile"):
        from selfsup.losses.mi_bounds import estimate
        estimate("mine", s, target)


# --------------------------------------------------------------------------- method.estimator


def _nwj(joint: list[float], marg: list[float]) -> float:
    return sum(joint) / len(joint) - sum(math.exp(v) for v in marg) / len(marg) / math.e


def test_simclr_views_read_by_nwj_equal_the_bound_on_the_2n_view_matrix():
    """NT-Xent's critic (cosine / tau over 2N views, an anchor never its own candidate) read by NWJ:
    each direction's NWJ from explicit loops over the 2N x 2N view matrix, averaged."""
    from selfsup.losses import NTXent
    from selfsup.losses.mi_bounds import ContrastiveBound

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    tau, n = 0.5, 5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).numpy()
    sim = (z @ z.T) / tau  # [2N, 2N]
    values = []
    for anchors in (range(n), range(n, 2 * n)):  # direction 1: views 1 as anchors; direction 2: views 2
        joint = [sim[i][(i + n) % (2 * n)] for i in anchors]
        marg = [sim[i][j] for i in anchors for j in range(2 * n) if j not in (i, (i + n) % (2 * n))]
        values.append(_nwj(joint, marg))
    out = ContrastiveBound(NTXent(tau, gather_distributed=False), "nwj")(z1, z2)
    assert abs(float(out.mi_bound) - sum(values) / 2) < 1e-10 and abs(float(out.loss) + sum(values) / 2) < 1e-10
    assert out.candidates == 2 * n - 1
    plain = NTXent(tau, gather_distributed=False)(z1, z2)  # infonce: the criterion itself
    same = ContrastiveBound(NTXent(tau, gather_distributed=False), "infonce")(z1, z2)
    assert torch.equal(plain.loss, same.loss) and torch.equal(plain.mi_bound, same.mi_bound)


def test_moco_queue_read_by_js_and_mine_state():
    """MoCo's critic (the positive key and a queue of K negatives) read by JS and by DV / MINE."""
    from selfsup.losses import InfoNCE
    from selfsup.losses.mi_bounds import ContrastiveBound

    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    queue = torch.randn(7, 6, generator=g, dtype=torch.float64)
    tau = 0.2
    nq, nk, nn_ = (torch.nn.functional.normalize(t, dim=1).numpy() for t in (q, k, queue))
    joint = [float(nq[i] @ nk[i]) / tau for i in range(4)]
    marg = [float(nq[i] @ nn_[j]) / tau for i in range(4) for j in range(7)]
    nwj_at_f_plus_1 = sum(joint) / 4 + 1 - sum(math.exp(v) for v in marg) / len(marg)
    out = ContrastiveBound(InfoNCE(tau, batch_negatives=False), "js")(q, k, queue)
    assert abs(float(out.mi_bound) - nwj_at_f_plus_1) < 1e-10 and out.candidates == 8
    js_ref = sum(-_softplus(-v) for v in joint) / 4 - sum(_softplus(v) for v in marg) / len(marg)
    assert abs(float(out.loss) + js_ref) < 1e-10
    mine = ContrastiveBound(InfoNCE(tau, batch_negatives=False), "dv")
    partition = sum(math.exp(v) for v in marg) / len(marg)
    mine(q, k, queue)
    assert abs(float(mine.log_ema) - math.log(0.9 + 0.1 * partition)) < 1e-6  # the moving average moved (its log)
    mine.eval()
    mine(q, k, queue)
    assert abs(float(mine.log_ema) - math.log(0.9 + 0.1 * partition)) < 1e-6  # not in evaluation
    assert "log_ema" not in mine.state_dict()  # checkpoints keep their keys
    slow = ContrastiveBound(InfoNCE(tau, batch_negatives=False), "dv", momentum=0.5)  # its rate reaches dv
    slow(q, k, queue)
    assert abs(float(slow.log_ema) - math.log(0.5 + 0.5 * partition)) < 1e-6


def test_method_estimator_reaches_simclr_and_moco_and_is_checked():
    from selfsup.config import ConfigError, load_config
    from selfsup.encoders import create_encoder
    from selfsup.methods import METHODS

    from conftest import TINY_INFO

    for name in ("simclr", "moco"):
        cfg = load_config(None, [f"method.name={name}", "method.estimator=smile", "method.smile_tau=2.0"])
        enc = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64]})
        method = METHODS.get(name)(cfg.method, enc, TINY_INFO)
        assert method.criterion.estimator == "smile" and method.criterion.tau == 2.0
        out = method.training_step(torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8))
        assert torch.isfinite(out["loss"]) and torch.isfinite(out["mi_bound"])
    with pytest.raises(ConfigError, match="method.estimator"):
        load_config(None, ["method.name=simclr", "method.estimator=mine"])
    # the tour's case: smile_tau with the default estimator (infonce) was accepted and ignored
    for name, estimator in (("simclr", "infonce"), ("moco", "nwj")):
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"method.name={name}", f"method.estimator={estimator}", "method.smile_tau=2.0"])
        assert str(err.value) == (f"config key method.smile_tau=2.0 applies only when method.estimator is smile "
                                  f"(it is {estimator}), so it would be ignored: drop it, or set method.estimator=smile")
    assert load_config(None, ["method.name=simclr", "method.smile_tau=5.0"]).method.smile_tau == 5.0  # the default


def test_rows_with_different_candidate_counts_are_refused():
    """InfoNCE's log N counts each row's candidates; rows masked differently would get a wrong N."""
    s = torch.zeros(3, 4)
    s[0, 2] = float("-inf")
    with pytest.raises(ValueError, match=r"same number of candidates \(non -inf entries\), got \[3, 4\]"):
        infonce(s, torch.tensor([0, 1, 2]))


# --------------------------------------------------------------------------- benchmarks/mi_bounds.py


def _benchmark():
    """benchmarks/mi_bounds.py as a module (its name differs from selfsup.losses.mi_bounds)."""
    import importlib.util
    import sys

    from conftest import ROOT

    if "mi_bounds_benchmark" not in sys.modules:
        spec = importlib.util.spec_from_file_location("mi_bounds_benchmark", ROOT / "benchmarks" / "mi_bounds.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["mi_bounds_benchmark"] = module
        spec.loader.exec_module(module)
    return sys.modules["mi_bounds_benchmark"]


def _library_bound(name: str, s: torch.Tensor, log_ema: torch.Tensor):
    """The estimator ``name`` of the benchmark, from the library functions: (Bound, new_log_ema)."""
    if name == "MINE":
        return dv(s, log_ema, momentum=0.9)
    fns = {"InfoNCE": infonce, "NWJ": nwj, "JS": js, "SMILE (tau=1)": lambda v: smile(v, 1.0),
           "SMILE (tau=5)": lambda v: smile(v, 5.0), "SMILE (tau=inf)": lambda v: smile(v, None)}
    return fns[name](s), log_ema


@pytest.mark.parametrize("kind", ["separable", "concat"])
@torch.no_grad()
def test_benchmark_stacked_critics_equal_the_library_critics(kind):
    """The benchmark's batch of critics (stacked weights, baddbmm) scores every pair as each
    estimator's own critic module does with the same weights."""
    bench = _benchmark()
    torch.manual_seed(0)
    critics = [bench.make_critic(kind, concat_hidden=16) for _ in bench.ESTIMATORS]
    params = bench.stack_critics(kind, critics)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, bench.DIM, generator=g), torch.randn(12, bench.DIM, generator=g)
    scores = bench.stacked_scores(kind, params, x, y)  # [E, B, B]
    assert scores.shape == (len(critics), 12, 12)
    for e, critic in enumerate(critics):
        assert torch.allclose(scores[e], critic(x, y), atol=1e-5, rtol=1e-5), e
    # the stacked tensors are copies: the critic modules' weights are not trained through them
    first = next(iter(params.values()))
    first.add_(1.0)
    assert torch.allclose(bench.stacked_scores(kind, bench.stack_critics(kind, critics), x, y)[0], critics[0](x, y),
                          atol=1e-5, rtol=1e-5)


TRAINED_BY = {"infonce": "InfoNCE", "nwj": "NWJ", "js": "JS", "mine": "MINE"}  # each critic's training bound


def test_benchmark_shares_one_critic_among_the_estimators_of_one_objective():
    """Four critics for seven estimators: one per training objective; JS and the SMILE readouts (SMILE trains on
    JS, Song & Ermon's smile_lower_bound) read the JS critic, each other estimator its own."""
    bench = _benchmark()
    assert bench.CRITICS == ("infonce", "nwj", "js", "mine")
    read = {est.name: bench.CRITICS[bench.critic_index(est)] for est in bench.ESTIMATORS}
    assert read == {"InfoNCE": "infonce", "NWJ": "nwj", "JS": "js", "MINE": "mine", "SMILE (tau=1)": "js",
                    "SMILE (tau=5)": "js", "SMILE (tau=inf)": "js"}


@pytest.mark.parametrize("scale", [0.5, 4.0, 30.0])
def test_benchmark_objective_equals_the_library_bounds(scale):
    """The four objectives at once on [C, B, B] scores and the seven readouts: the loss's gradient, the MI
    estimates and MINE's moving average equal the library functions on each critic's matrix (at scale 4 and
    30 the SMILE clips act: tau 1, 5 and none give different estimates)."""
    bench = _benchmark()
    g = torch.Generator().manual_seed(int(scale * 10))
    base = scale * torch.randn(len(bench.CRITICS), 9, 9, generator=g, dtype=torch.float64)
    base = base + scale * torch.eye(9, dtype=torch.float64)
    ema = torch.tensor([math.log(2.5)], dtype=torch.float64)  # the log of MINE's moving average
    scores = base.clone().requires_grad_(True)
    loss, mi, new_ema = bench.objective(scores, ema)
    assert mi.shape == (len(bench.ESTIMATORS),)
    (grad,) = torch.autograd.grad(loss, scores)
    ref = base.clone().requires_grad_(True)
    ref_loss, ref_mi, ref_ema = 0.0, [], None
    for c, objective in enumerate(bench.CRITICS):  # each critic trains on its own bound
        bound, out = _library_bound(TRAINED_BY[objective], ref[c], ema[0])
        ref_loss = ref_loss + bound.loss
        if objective == "mine":
            ref_ema = out
    for est in bench.ESTIMATORS:  # and each estimator reads its critic
        ref_mi.append(float(_library_bound(est.name, ref[bench.critic_index(est)].detach(), ema[0])[0].mi))
    (ref_grad,) = torch.autograd.grad(ref_loss, ref)
    assert torch.allclose(mi, torch.tensor(ref_mi, dtype=torch.float64), atol=1e-10, rtol=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-12, rtol=1e-10)
    assert abs(float(new_ema[0]) - float(ref_ema)) < 1e-12
    if scale >= 4:  # the clips matter here, so the readouts are told apart
        smiles = mi[[i for i, est in enumerate(bench.ESTIMATORS) if est.readout == "smile" and est.loss == "js"]]
        assert len(set(smiles.tolist())) == 3


def test_mine_survives_a_partition_that_overflows_float32():
    """MINE's moving average of E_q[e^f] with marginal scores near 120 (e^120 overflows float32):
    the loss, the gradient and the MI stay finite (inf / inf was NaN), the average's log is the
    float64 value of its formula, and the gradient is E_p[f] - E_q[e^f] / new_ema's, in float64."""
    s = (torch.full((6, 6), 120.0) + 0.5 * torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    s.requires_grad_(True)
    bound, new_ema = dv(s, torch.tensor(0.0), momentum=0.9)
    (g,) = torch.autograd.grad(bound.loss, s)
    marg = ~torch.eye(6, dtype=torch.bool)
    partition = torch.exp(s.detach().double()[marg]).mean()  # about e^120: finite in float64
    # the log of the average within 1e-6 (the batch's log E_q[e^f] is computed from float32 scores)
    assert new_ema.dtype == torch.float64 and float(new_ema) == pytest.approx(math.log(0.9 + 0.1 * float(partition)),
                                                                              abs=1e-6)
    expected = -(torch.eye(6, dtype=torch.float64) / 6
                 - marg * torch.exp(s.detach().double()) / marg.sum() / (0.9 + 0.1 * partition))
    assert torch.isfinite(bound.loss) and torch.isfinite(bound.mi) and torch.isfinite(g).all()
    assert torch.allclose(g.double(), expected, atol=1e-6)
    bench = _benchmark()  # the benchmark's batched MINE: the same, finite
    names = [est.name for est in bench.ESTIMATORS]
    scores = torch.randn(len(bench.CRITICS), 6, 6, generator=torch.Generator().manual_seed(1))
    scores[bench.CRITICS.index("mine")] = s.detach()
    scores.requires_grad_(True)
    loss, mi, ema = bench.objective(scores, torch.zeros(1, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.isfinite(grad).all() and torch.isfinite(mi[names.index("MINE")])
    assert float(ema[0]) == pytest.approx(float(new_ema), rel=1e-9)


def test_benchmark_objective_keeps_one_critics_overflow_away_from_the_others():
    """A JS-trained critic whose NWJ readout overflows (e^f = inf in float32) must not turn the
    other critics' gradients into NaN (0 * inf); its own gradient stays JS's, finite."""
    bench = _benchmark()
    names = [est.name for est in bench.ESTIMATORS]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(len(bench.CRITICS), 8, 8, generator=g)
    base[bench.CRITICS.index("js")] += 200.0  # e^200 overflows float32
    scores = base.clone().requires_grad_(True)
    loss, mi, _ = bench.objective(scores, torch.zeros(1))
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.isfinite(grad).all()
    assert float(mi[names.index("JS")]) == float("-inf")  # the NWJ reading of that critic, as the library's
    assert float(js(base[bench.CRITICS.index("js")]).mi) == float("-inf")


def test_benchmark_step_with_one_adam_equals_separate_runs():
    """Three training steps of the batch of critics (one fused Adam on the stacked weights, the
    batched objective) equal four separate runs: each critic module, its objective's library bound,
    its own Adam (MINE's moving average carried)."""
    import copy

    bench = _benchmark()
    for kind in ("separable", "concat"):
        torch.manual_seed(0)
        # float64: Adam normalises each gradient entry, so float32 rounding of a near-zero
        # gradient (summed in another order) could flip a step's sign
        critics = [bench.make_critic(kind, concat_hidden=16).double() for _ in bench.CRITICS]
        params = bench.stack_critics(kind, critics)
        opt = torch.optim.Adam(list(params.values()), lr=bench.LR, fused=True)
        refs = [copy.deepcopy(c) for c in critics]
        ref_opts = [torch.optim.Adam(c.parameters(), lr=bench.LR) for c in refs]
        ema, ref_ema = torch.zeros(1, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)  # log averages
        g = torch.Generator().manual_seed(2)
        xs, ys = (v.double() for v in bench.level_samples(bench.mi_to_rho(6.0), 3, g, cubic=False))
        for t in range(3):
            loss, _, ema = bench.objective(bench.stacked_scores(kind, params, xs[t], ys[t]), ema)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for objective, critic, ref_opt in zip(bench.CRITICS, refs, ref_opts):
                bound, out = _library_bound(TRAINED_BY[objective], critic(xs[t], ys[t]), ref_ema)
                ref_opt.zero_grad()
                bound.loss.backward()
                ref_opt.step()
                if objective == "mine":
                    ref_ema = out.detach()
        trained = bench.stack_critics(kind, refs)
        assert set(trained) == set(params)
        for name, value in params.items():
            assert torch.allclose(value, trained[name], atol=1e-10, rtol=1e-8), (kind, name)
            assert not torch.equal(value, bench.stack_critics(kind, critics)[name]), name  # they did move
        assert abs(float(ema[0]) - float(ref_ema)) < 1e-10


def test_benchmark_staircase_samples_carry_the_stated_mi():
    """x, y per level: componentwise correlation rho with -DIM/2 log(1 - rho^2) = the level's MI
    (the sample correlation on 64 x 300 pairs per dimension), y^3 with --cubic."""
    bench = _benchmark()
    g = torch.Generator().manual_seed(0)
    for mi in (2.0, 6.0, 10.0):
        rho = bench.mi_to_rho(mi)
        assert abs(-bench.DIM / 2 * math.log(1 - rho**2) - mi) < 1e-12
        x, y = bench.level_samples(rho, 300, g, cubic=False)  # [300, 64, 20]
        assert x.shape == y.shape == (300, bench.BATCH, bench.DIM)
        xf, yf = x.reshape(-1, bench.DIM).double(), y.reshape(-1, bench.DIM).double()
        corr = ((xf - xf.mean(0)) * (yf - yf.mean(0))).mean(0) / (xf.std(0) * yf.std(0))  # [20]
        assert abs(float(corr.mean()) - rho) < 0.01, mi
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(bench.level_samples(0.5, 4, g1, cubic=True)[1], bench.level_samples(0.5, 4, g2, cubic=False)[1] ** 3)


def _stats(bench, infonce_means=(1.8, 3.0, 3.59, 3.92, 4.06), infonce_max=4.15, nwj_var=(0.05, 0.2, 0.5, 2.1, 4.6),
           mine_var=(0.05, 0.13, 0.26, 0.51, 0.94), smile_bias=(-0.4, -0.35, -0.2, 0.1, 0.53),
           smile_var=(0.05, 0.1, 0.1, 0.2, 0.4)):
    """Per-level statistics of a run, as level_stats returns them, with the given values."""
    def rows(means=None, var=(0.1,) * 5, bias=None, top=None):
        return [{"true_mi": lv, "mean": means[i] if means else lv + (bias[i] if bias else 0.0),
                 "bias": (means[i] - lv) if means else (bias[i] if bias else 0.0), "variance": var[i],
                 "mse": var[i] + ((means[i] - lv) if means else (bias[i] if bias else 0.0)) ** 2,
                 "max": top if top is not None else lv} for i, lv in enumerate(bench.LEVELS)]

    stats = {est.name: rows() for est in bench.ESTIMATORS}
    stats["InfoNCE"] = rows(means=infonce_means, var=(0.04, 0.04, 0.02, 0.01, 0.004), top=infonce_max)
    stats["NWJ"], stats["MINE"] = rows(var=nwj_var), rows(var=mine_var, bias=(-0.45, -1.4, -2.3, -3.7, -5.4))
    stats["SMILE (tau=5)"] = rows(var=smile_var, bias=smile_bias)
    return stats


def test_benchmark_findings_are_checked_by_their_stated_criteria():
    """InfoNCE at 3.59 / 3.92 / 4.06 nats for true MI 6 / 8 / 10 (log 64 = 4.16) is saturation (issue
    18); still climbing steeply, or an estimate above log 64, is not. Each finding states its
    criterion and the numbers it read."""
    bench = _benchmark()

    def verdicts(**kw):
        return {c["finding"]: c["holds"] for c in bench.findings(_stats(bench, **kw))}

    sat = f"InfoNCE saturates at log 64 = {math.log(64):.2f} nats"
    base = verdicts()
    assert base == {sat: True, "NWJ's and MINE's variance grow quickly with the MI": True,
                    "SMILE (tau=5) has a small bias": True, "SMILE (tau=5) has a much lower variance than MINE": True}
    assert not verdicts(infonce_means=(1.8, 2.5, 2.9, 3.3, 3.8))[sat]  # 0.36 below log 64 at 10 nats
    assert not verdicts(infonce_means=(1.8, 3.0, 3.4, 3.6, 4.0))[sat]  # still rising 0.4 nats from 8 to 10
    assert not verdicts(infonce_max=4.2)[sat]  # above log 64: impossible for InfoNCE
    growth = "NWJ's and MINE's variance grow quickly with the MI"
    assert not verdicts(mine_var=(0.1, 0.13, 0.26, 0.51, 0.94))[growth]  # 9.4x
    assert not verdicts(nwj_var=(0.05, 0.2, 0.1, 2.1, 4.6))[growth]  # falls at 6 nats
    assert not verdicts(smile_bias=(-0.4, -0.35, -0.2, 0.1, -1.1))["SMILE (tau=5) has a small bias"]
    assert verdicts(smile_bias=(-0.5, -0.35, -0.6, 0.8, -1.0))["SMILE (tau=5) has a small bias"]  # the limits
    lower = "SMILE (tau=5) has a much lower variance than MINE"
    assert not verdicts(smile_var=(0.05, 0.1, 0.191, 0.334, 0.529))[lower]  # 0.74x, 0.65x, 0.56x of MINE's
    nan = float("nan")  # a diverged critic (MINE with the concatenated critic at 8 and 10 nats): not checkable
    assert verdicts(mine_var=(0.05, 0.13, 0.26, nan, nan))[growth] is None
    assert verdicts(mine_var=(0.05, 0.13, 0.26, nan, nan))[lower] is None
    assert verdicts(mine_var=(0.05, 0.13, 0.26, nan, nan))[sat] is True
    checks = bench.findings(_stats(bench))
    assert "every estimate <= log 64" in checks[0]["criterion"] and "3.59, 3.92, 4.06" in checks[0]["evidence"]
    assert all(c["criterion"] and c["evidence"] for c in checks)


def test_benchmark_command_line_writes_its_results(tmp_path, monkeypatch, capsys):
    """A short run of both critics writes the json, the table with the command, the machine, the
    threads and the load, and the figure; a bad --critics is refused in one line."""
    import json
    import sys

    bench = _benchmark()
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--steps", "10", "--concat-hidden", "8", "--threads",
                                      str(threads), "--jobs", "1", "--out", str(tmp_path)])
    bench.main()
    assert torch.get_num_threads() == threads
    md = (tmp_path / "mi_bounds.md").read_text()
    assert (f"`python benchmarks/mi_bounds.py --steps 10 --critics separable,concat --concat-hidden 8 --seed 0 "
            f"--threads {threads} --jobs 1`") in md
    assert bench.cpu_name() in md and f"{threads} torch thread(s)" in md and "load average" in md
    assert md.count("| SMILE (tau=5) |") == 2 and md.count("does not hold") + md.count("**holds**") == 8
    data = json.loads((tmp_path / "mi_bounds.json").read_text())
    assert set(data["stats"]) == {"separable", "concat"} and len(data["findings"]["concat"]) == 4
    # MINE's gradient diagnostics per level, kept in the json and stated in the md (kept by --recheck below)
    assert [r["true_mi"] for r in data["mine_diagnostics"]["concat"]] == list(bench.LEVELS)
    assert all(0 < r["ratio_median"] <= 1 / (1 - bench.MOMENTUM) for r in data["mine_diagnostics"]["separable"])
    assert md.count("MINE's gradient weight on its partition term") == 2
    assert (tmp_path / "mi_bounds.png").stat().st_size > 10_000
    # --recheck: the findings again from the json's statistics reproduce the table the run wrote
    (tmp_path / "mi_bounds.md").rename(tmp_path / "run.md")
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--recheck", str(tmp_path / "mi_bounds.json")])
    bench.main()
    assert (tmp_path / "mi_bounds.md").read_text() == (tmp_path / "run.md").read_text()
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--recheck", str(tmp_path / "mi_bounds.json"),
                                      "--out", str(tmp_path / "elsewhere")])
    bench.main()  # --out is where a recheck writes, the json read stays as it is
    assert (tmp_path / "elsewhere" / "mi_bounds.md").read_text() == (tmp_path / "run.md").read_text()
    with pytest.raises(SystemExit, match=r"--recheck .*run.md: not a results json of benchmarks/mi_bounds.py"):
        bench.recheck(tmp_path / "run.md")
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--critics", "separable,bilinear"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--critics: choose from separable, concat (got 'separable,bilinear')" in capsys.readouterr().err


# ------------------------------------------------- benchmarks/mi_bounds.py: the concatenated critics' PairMLP


def _plain_concat_scores(critic: ConcatCritic, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Linear]:
    """f(x_i, y_j) written the plain way: one nn.Linear(Dx + Dy, H) on the [B B, Dx + Dy]
    concatenated pairs (its weight the critic's x and y first layers side by side), then the
    critic's later layers. Returns (scores [B, B], that first layer)."""
    b, h = x.shape[0], critic.x_in.out_features
    first = torch.nn.Linear(x.shape[1] + y.shape[1], h).to(x.dtype)
    with torch.no_grad():
        first.weight.copy_(torch.cat([critic.x_in.weight, critic.y_in.weight], 1))
        first.bias.copy_(critic.x_in.bias)
    pairs = torch.cat([x.repeat_interleave(b, 0), y.repeat(b, 1)], 1)  # [B B, Dx + Dy]: row i B + j = [x_i, y_j]
    return critic.out(torch.relu(first(pairs))).view(b, b), first


@pytest.mark.parametrize("dtype,hidden,layers,batch", [(torch.float64, 16, 2, 10), (torch.float32, 64, 2, 64),
                                                       (torch.float64, 8, 1, 7), (torch.float64, 8, 3, 5)])
def test_benchmark_pair_mlp_equals_a_plain_concat_critic_in_value_and_gradient(dtype, hidden, layers, batch):
    """The stacked concatenated critics (first layer split into x and y parts, PairMLP's own
    backward) give each critic's scores and the gradients of a weighted sum of them, for every
    weight, bias and the inputs x and y, as a plain ConcatCritic whose first layer is one
    nn.Linear on the concatenated pair [x_i, y_j], through autograd (to 2e-6 of each tensor's scale in float32,
    1e-12 in float64); for the benchmark's critic (64 wide, batch 64) and other depths and widths."""
    bench = _benchmark()
    torch.manual_seed(batch)
    critics = [ConcatCritic(bench.DIM, bench.DIM, hidden=hidden, layers=layers).to(dtype) for _ in range(3)]
    params = bench.stack_critics("concat", critics)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, bench.DIM, generator=g, dtype=dtype).requires_grad_(True)
    y = torch.randn(batch, bench.DIM, generator=g, dtype=dtype).requires_grad_(True)
    weight = torch.randn(len(critics), batch, batch, generator=g, dtype=dtype)  # [E, B, B]
    scores = bench.stacked_scores("concat", params, x, y)  # [E, B, B]
    (scores * weight).sum().backward()
    rel = 1e-12 if dtype == torch.float64 else 2e-6  # of the tensor's scale: rounding of sums over B^2 pairs

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))
    x_grad, y_grad = torch.zeros_like(x), torch.zeros_like(y)
    for e, critic in enumerate(critics):
        xe, ye = x.detach().clone().requires_grad_(True), y.detach().clone().requires_grad_(True)
        plain, first = _plain_concat_scores(critic, xe, ye)
        (plain * weight[e]).sum().backward()
        assert close(scores[e].detach(), plain.detach()), e
        d = bench.DIM
        assert close(params["x_in.weight"].grad[e], first.weight.grad[:, :d].T), e
        assert close(params["y_in.weight"].grad[e], first.weight.grad[:, d:].T), e
        assert close(params["x_in.bias"].grad[e, 0], first.bias.grad), e
        later = [m for m in critic.out if isinstance(m, torch.nn.Linear)]
        assert len(later) == layers + 1  # mlp(): layers x Linear(H, H), then Linear(H, 1)
        for i, lin in enumerate(later):
            assert close(params[f"out.{i}.weight"].grad[e], lin.weight.grad.T), (e, i)
            assert close(params[f"out.{i}.bias"].grad[e, 0], lin.bias.grad), (e, i)
        x_grad, y_grad = x_grad + xe.grad, y_grad + ye.grad
    assert close(x.grad, x_grad) and close(y.grad, y_grad)
    assert all(float(p.grad.abs().sum()) > 0 for p in params.values())  # every gradient reached, none all zero


def test_benchmark_pair_mlp_refuses_a_second_backward():
    """PairMLP's backward turns its saved activations into their ReLU masks in place, so a second
    backward through the same forward would read masks as activations: autograd refuses it."""
    bench = _benchmark()
    torch.manual_seed(0)
    params = bench.stack_critics("concat", [bench.make_critic("concat", concat_hidden=8) for _ in range(2)])
    x, y = torch.randn(5, bench.DIM), torch.randn(5, bench.DIM)
    loss = bench.stacked_scores("concat", params, x, y).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_benchmark_a_run_of_one_critic_keeps_the_other_critics_results(tmp_path, monkeypatch):
    """--critics concat into a folder that holds a separable run of the same settings keeps the
    separable results (statistics, findings, command, the figure's estimates) beside the new
    concat ones, each section naming its own command, and --recheck reproduces that table; a
    run of other --steps replaces them instead."""
    import json
    import sys

    bench = _benchmark()
    threads = torch.get_num_threads()

    def main(*argv):
        monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--steps", "10", "--concat-hidden", "8", "--threads",
                                          str(threads), "--jobs", "1", "--out", str(tmp_path), *argv])
        bench.main()
        return json.loads((tmp_path / "mi_bounds.json").read_text()), (tmp_path / "mi_bounds.md").read_text()

    first, _ = main("--critics", "separable")
    assert set(first["stats"]) == {"separable"} and set(np.load(tmp_path / "mi_bounds.npz")) == {"separable"}
    kept = np.load(tmp_path / "mi_bounds.npz")["separable"]
    assert kept.shape == (5 * 10, len(bench.ESTIMATORS))
    data, md = main("--critics", "concat")
    assert set(data["stats"]) == {"separable", "concat"}
    assert data["stats"]["separable"] == first["stats"]["separable"]
    assert data["seconds"]["separable"] == first["seconds"]["separable"]
    assert data["commands"] == {"separable": first["command"], "concat": data["command"]}
    assert "--critics separable " in data["commands"]["separable"] and "--critics concat " in data["command"]
    assert md.index("## separable critic") < md.index(f"`{first['command']}`") < md.index("## concat critic") \
        < md.index(f"`{data['command']}`")
    assert md.count("| SMILE (tau=5) |") == 2 and "leaves out" not in md
    npz = np.load(tmp_path / "mi_bounds.npz")
    assert set(npz) == {"separable", "concat"} and np.array_equal(npz["separable"], kept)
    (tmp_path / "mi_bounds.md").rename(tmp_path / "run.md")
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--recheck", str(tmp_path / "mi_bounds.json")])
    bench.main()
    assert (tmp_path / "mi_bounds.md").read_text() == (tmp_path / "run.md").read_text()
    # another run's npz (the tour's: a 20-step probe overwrote the 4000-step run's local estimates): never drawn
    # as this json's; the table keeps both critics, the figure says what it lacks
    np.savez_compressed(tmp_path / "mi_bounds.npz", separable=np.zeros((5 * 2, len(bench.ESTIMATORS)), np.float32))
    data, md = main("--critics", "concat")
    assert set(data["stats"]) == {"separable", "concat"} and data["plotted"] == ["concat"]
    assert "The figure leaves out the separable critic" in md
    (tmp_path / "mi_bounds.npz").unlink()  # the estimates gone: the same
    data, md = main("--critics", "concat")
    assert set(data["stats"]) == {"separable", "concat"} and data["plotted"] == ["concat"]
    assert "The figure leaves out the separable critic" in md
    data, md = main("--critics", "concat", "--steps", "12")  # other settings: the separable run is not kept
    assert set(data["stats"]) == {"concat"} and "## separable critic" not in md


def _naive_mine_gradient(joint: list[float], marg: list[float], log_prev: float, momentum: float = 0.9
                         ) -> tuple[list[float], list[float], float]:
    """MINE's surrogate gradient by its formula in Python floats: d/d f of
    ``-(mean joint - E_q[e^f] / new_avg)`` (new_avg held fixed), with ``new_avg = momentum * avg +
    (1 - momentum) * E_q[e^f]``, every exponential taken relative to the largest log term (no
    overflow). Returns (d joint, d marginal, log new_avg)."""
    top = max(marg)
    log_batch = top + math.log(sum(math.exp(v - top) for v in marg) / len(marg))
    ref = max(log_prev, log_batch)
    log_new = ref + math.log(momentum * math.exp(log_prev - ref) + (1 - momentum) * math.exp(log_batch - ref))
    return ([-1 / len(joint)] * len(joint), [math.exp(v - log_new) / len(marg) for v in marg], log_new)


def test_mine_keeps_its_partition_gradient_when_the_average_passes_the_float_range():
    """Scores near 100 (a contrastive critic at temperature 0.01): E_q[e^f] ~ e^97 overflows a
    float32 moving average, and past e^709.8 a float64 one. The moving average is kept as its
    log, so the second step still pushes the marginal pairs down by E_q[e^f] / new_avg (the
    average held as a number turned inf, the ratio 0: only the positives were trained)."""
    from selfsup.losses import InfoNCE
    from selfsup.losses.mi_bounds import ContrastiveBound

    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 8, generator=g, dtype=torch.float64)
    k = q + 0.05 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    queue = q[torch.tensor([1, 2, 3, 0, 2, 3])] + 0.1 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    tau = 0.01
    mine = ContrastiveBound(InfoNCE(tau, batch_negatives=False), "dv")
    nq, nk, nn_ = (torch.nn.functional.normalize(t, dim=1) for t in (q, k, queue))
    joint = [float(nq[i] @ nk[i]) / tau for i in range(4)]
    marg = [float(nq[i] @ nn_[j]) / tau for i in range(4) for j in range(6)]
    assert max(marg) > 89  # e^f overflows float32
    log_avg = 0.0  # MINE starts the average at 1
    for step in range(2):
        query = q.clone().requires_grad_(True)
        out = mine(query, k, queue)
        (grad,) = torch.autograd.grad(out.loss, query)
        # the expected gradient, through the scores' Jacobian: d score_ij / d q_i by autograd on the naive scores
        d_joint, d_marg, log_avg = _naive_mine_gradient(joint, marg, log_avg)
        q_ref = q.clone().requires_grad_(True)
        nq_ref = torch.nn.functional.normalize(q_ref, dim=1)
        s_joint, s_marg = (nq_ref * nk).sum(1) / tau, (nq_ref @ nn_.T).flatten() / tau
        surrogate = (torch.tensor(d_joint, dtype=torch.float64) * s_joint).sum() \
            + (torch.tensor(d_marg, dtype=torch.float64) * s_marg).sum()
        (expected,) = torch.autograd.grad(surrogate, q_ref)
        # rtol 1e-4: the buffer is float32 (as the module's other buffers), its log of ~97 rounded to ~4e-6
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-9), step
        assert float(out.mi_bound) == pytest.approx(sum(joint) / 4 - max(marg) - math.log(
            sum(math.exp(v - max(marg)) for v in marg) / len(marg)), abs=1e-9)
    assert float(mine.log_ema) == pytest.approx(log_avg, abs=1e-4) and log_avg > 89  # e^89 overflows float32


def test_benchmark_mine_diagnostics_and_their_note():
    """Per level: the median, mean and share below 0.1 of MINE's ratio E_q[e^f] / new_ema (from
    the logs), and the log partition at the level's end, against loops; the md note gives the
    reason for a divergence only when MINE diverged."""
    bench = _benchmark()
    steps = 4
    g = np.random.default_rng(0)
    log_partition = g.normal(0, 3, size=5 * steps)
    log_average = g.normal(0, 3, size=5 * steps)
    rows = bench.mine_diagnostics(log_partition, log_average, steps)
    for i, row in enumerate(rows):
        ratios = sorted(math.exp(log_partition[i * steps + t] - log_average[i * steps + t]) for t in range(steps))
        assert row["true_mi"] == bench.LEVELS[i]
        assert row["ratio_median"] == pytest.approx((ratios[1] + ratios[2]) / 2, rel=1e-12)
        assert row["ratio_mean"] == pytest.approx(sum(ratios) / steps, rel=1e-12)
        assert row["ratio_low_share"] == sum(r < 0.1 for r in ratios) / steps
        assert row["log_partition_end"] == log_partition[(i + 1) * steps - 1]
    note = bench.mine_note(rows, diverged=False)
    assert "median " + ", ".join(f"{r['ratio_median']:.2f}" for r in rows) in note
    assert "The divergence above" not in note and "Choi & Lee 2020" in note
    assert "The divergence above is this drift" in bench.mine_note(rows, diverged=True)


def test_benchmark_keeps_freed_memory_so_activations_reuse_their_pages():
    """After keep_freed_memory (glibc), 8 MiB blocks allocated, written and freed in turn (sizes
    of the concatenated critics' activations, in a fresh process) come back from the heap: at
    most two blocks' page faults in 40 blocks (on fresh pages each would cost 2,048)."""
    import os
    import platform
    import subprocess
    import sys

    from conftest import ROOT

    if platform.libc_ver()[0] != "glibc":  # no libc.so.6 to set: nothing done, and said so
        assert not _benchmark().keep_freed_memory()
        return
    code = (f"import sys, resource, torch; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import mi_bounds; "
            "kept = mi_bounds.keep_freed_memory(); blocks = [torch.empty(2 << 20).fill_(1.0) for _ in range(3)]; "
            "del blocks; f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for i in range(20):\n    a = torch.empty(2 << 20).fill_(1.0); b = torch.empty(2 << 20).fill_(2.0); del a, b\n"
            "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    # 40 blocks on fresh pages: 81,920 faults (measured without the call: 79,454); kept: at most a
    # block's worth or two (the heap grown once)
    assert out[0] == "True" and int(out[1]) <= 4096, out


def test_benchmark_jobs_give_each_critic_the_sequential_runs_numbers(monkeypatch):
    """--jobs 2 trains the two critics side by side in spawned processes (the whole staircase in the
    time of the slower critic on 2 cores); each critic's estimates equal those of the sequential run."""
    import argparse
    import importlib

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the spawned workers import it by this name
    bench = importlib.import_module("mi_bounds")
    args = argparse.Namespace(steps=10, cubic=False, seed=0, concat_hidden=8, threads=1, jobs=2,
                              critics="separable,concat")
    threads = torch.get_num_threads()
    together = {r["critic"]: r for r in bench.trained_critics(["separable", "concat"], args)}
    alone = {r["critic"]: r for r in bench.trained_critics(["separable", "concat"], argparse.Namespace(
        **{**vars(args), "jobs": 1}))}
    torch.set_num_threads(threads)
    assert set(together) == set(alone) == {"separable", "concat"}
    for kind in alone:
        assert np.array_equal(together[kind]["estimates"], alone[kind]["estimates"]), kind
    assert bench.command(args).endswith("--threads 1 --jobs 2")


def test_benchmark_defaults_train_the_critics_side_by_side_on_the_cores():
    """Left out, --jobs is one process per critic up to the cores and --threads shares the cores among
    them (a plain run on 2 cores took about 8.8 min one critic after the other, 6.4 side by side);
    values given are kept, and the recorded command names both."""
    import argparse

    bench = _benchmark()
    assert bench.parallel_plan(2, 2, None, None) == (2, 1)  # the 2-core machine: side by side, a thread each
    assert bench.parallel_plan(2, 16, None, None) == (2, 8)
    assert bench.parallel_plan(1, 2, None, None) == (1, 2)  # one critic: both cores to it
    assert bench.parallel_plan(2, 1, None, None) == (1, 1)
    assert bench.parallel_plan(2, 2, 1, None) == (1, 2) and bench.parallel_plan(2, 2, None, 3) == (2, 3)
    assert bench.parallel_plan(2, 2, 5, 1) == (5, 1)  # as given: min(jobs, critics) processes run
    args = argparse.Namespace(steps=4000, critics="separable,concat", concat_hidden=64, cubic=False, seed=0,
                              threads=2, jobs=1)
    assert bench.command(args).endswith("--seed 0 --threads 2 --jobs 1")


def test_benchmark_warns_of_more_threads_than_cores_and_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
    """The tour's: --jobs 2 --threads 2 on 2 cores ran 20x slower without a word; --out '' wrote into
    benchmarks/results (the committed results) instead of refusing."""
    import sys

    bench = _benchmark()
    assert bench.oversubscribed(2, 2, 1, 2) is None and bench.oversubscribed(5, 1, 2, 2) is None
    assert bench.oversubscribed(2, 2, 2, 2) == ("warning: --jobs 2 x --threads 2 = 4 threads on 2 cores: the "
                                                "critics' threads will wait for each other (a step took 20x longer); "
                                                "use --threads 1")
    monkeypatch.setattr(sys, "argv", ["mi_bounds.py", "--steps", "10", "--out", ""])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--out '' is empty: give a folder" in capsys.readouterr().err
