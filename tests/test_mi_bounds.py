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

    # MINE: the gradient of E_p[f] - E_q[e^f] / ema_new, with ema_new the moving average
    ema = torch.tensor(2.5, dtype=torch.float64)
    bound, new_ema = dv(s, ema, momentum=0.9)
    partition = torch.exp(s.detach()[marg_mask]).mean()
    assert abs(float(new_ema) - (0.9 * 2.5 + 0.1 * float(partition))) < 1e-12
    expected = -(torch.eye(len(s)) / len(s) - marg_mask * torch.exp(s.detach()) / marg_mask.sum() / new_ema)
    assert torch.allclose(grad(bound.loss), expected.double(), atol=1e-12)
    assert abs(float(bound.mi) - float(dv(s)[0].mi)) < 1e-12  # the value is DV's
    # momentum 0: the moving average is the batch's partition, and MINE's gradient is DV's
    assert torch.allclose(grad(dv(s, ema, momentum=0.0)[0].loss), grad(dv(s)[0].loss), atol=1e-12)
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
    assert abs(float(mine.ema) - (0.9 + 0.1 * partition)) < 1e-6  # the moving average moved (a float32 buffer)
    mine.eval()
    mine(q, k, queue)
    assert abs(float(mine.ema) - (0.9 + 0.1 * partition)) < 1e-6  # not in evaluation
    assert "ema" not in mine.state_dict()  # checkpoints keep their keys


def test_method_estimator_reaches_simclr_and_moco_and_is_checked():
    from selfsup.config import ConfigError, load_config
    from selfsup.encoders import create_encoder
    from selfsup.methods import METHODS

    from conftest import TINY_INFO

    for name in ("simclr", "moco"):
        cfg = load_config(None, [f"method.name={name}", "method.estimator=smile", "method.smile_tau=2.0"])
        enc = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64], "stem_width": 8})
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
