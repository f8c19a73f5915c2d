"""InfoNCE against naive per-row loops for every negatives source, the key queue, the
momentum teacher, MoCo's shuffled BatchNorm, and the moco / mocov3 training steps."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses import InfoNCE, NTXent, Queue
from selfsup.methods._contrastive import (MomentumTeacher, bn_groups, cosine_momentum, ema_update_,
                                          grouped_forward, shuffled_forward)

from conftest import TINY_INFO as INFO  # noqa: E402


def cos(a, b):
    return torch.dot(a, b) / (a.norm() * b.norm())


def naive(q, k, tau, negatives=None, batch=True, query_negatives=False):
    """Mean over i of -log(exp(s(q_i, k_i)) / sum over the candidates of q_i), one row at a time.

    Candidates: k_j for all j (batch) or k_i alone; plus q_j (j != i) with query_negatives;
    plus negatives[j] ([K, D]) or negatives[i, j] ([B, K, D])."""
    total, n_cand = 0.0, None
    for i in range(q.shape[0]):
        cands = list(range(k.shape[0])) if batch else [i]
        sims = [cos(q[i], k[j]) for j in cands]
        if query_negatives:
            sims += [cos(q[i], q[j]) for j in range(q.shape[0]) if j != i]
        if negatives is not None:
            rows = negatives if negatives.ndim == 2 else negatives[i]
            sims += [cos(q[i], r) for r in rows]
        logits = torch.stack(sims) / tau
        pos = cos(q[i], k[i]) / tau
        total = total - (pos - torch.logsumexp(logits, 0))
        n_cand = len(sims)
    return total / q.shape[0], n_cand


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def assert_same_loss_and_grads(out, ref, inputs):
    assert torch.allclose(out.loss.double(), ref, rtol=1e-6, atol=1e-7)
    got = torch.autograd.grad(out.loss, inputs)
    want = torch.autograd.grad(ref, inputs)
    for g, w in zip(got, want):
        assert torch.allclose(g.double(), w, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- InfoNCE vs naive loops


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_batch_negatives_match_naive_loop(tau):
    q, k = leaves((6, 5), (6, 5))
    out = InfoNCE(tau)(q, k)
    ref, n = naive(q, k, tau)
    assert out.candidates == n == 6
    assert_same_loss_and_grads(out, ref, (q, k))
    assert math.isclose(float(out.mi_bound), math.log(6) - float(ref.detach()), rel_tol=1e-6)


def test_symmetric_averages_both_directions():
    q, k = leaves((5, 4), (5, 4), seed=1)
    out = InfoNCE(0.3, symmetric=True)(q, k)
    ref = (naive(q, k, 0.3)[0] + naive(k, q, 0.3)[0]) / 2
    assert_same_loss_and_grads(out, ref, (q, k))


def test_query_negatives_symmetric_is_nt_xent():
    q, k = leaves((5, 4), (5, 4), seed=2)
    out = InfoNCE(0.5, query_negatives=True, symmetric=True)(q, k)
    ref = (naive(q, k, 0.5, query_negatives=True)[0] + naive(k, q, 0.5, query_negatives=True)[0]) / 2
    assert out.candidates == naive(q, k, 0.5, query_negatives=True)[1] == 2 * 5 - 1
    assert_same_loss_and_grads(out, ref, (q, k))
    assert torch.allclose(NTXent(0.5)(q, k).loss, out.loss)


def test_queue_negatives_match_naive_loop():
    q, k, queue = leaves((4, 6), (4, 6), (9, 6), seed=3)
    out = InfoNCE(0.2, batch_negatives=False)(q, k, queue)
    ref, n = naive(q, k, 0.2, negatives=queue, batch=False)
    assert out.candidates == n == 1 + 9
    assert_same_loss_and_grads(out, ref, (q, k, queue))


def test_per_query_bank_negatives_match_naive_loop():
    q, k, bank = leaves((4, 6), (4, 6), (4, 7, 6), seed=4)
    out = InfoNCE(0.07, batch_negatives=False)(q, k, bank)
    ref, n = naive(q, k, 0.07, negatives=bank, batch=False)
    assert out.candidates == n == 1 + 7
    assert_same_loss_and_grads(out, ref, (q, k, bank))


def test_batch_and_queue_negatives_together():
    q, k, queue = leaves((3, 5), (3, 5), (4, 5), seed=5)
    out = InfoNCE(0.4)(q, k, queue)
    ref, n = naive(q, k, 0.4, negatives=queue, batch=True)
    assert out.candidates == n == 3 + 4
    assert_same_loss_and_grads(out, ref, (q, k, queue))


def test_dot_product_scores_without_normalisation():
    q, k = leaves((4, 3), (4, 3), seed=6)
    out = InfoNCE(2.0, normalize=False)(q, k)
    ref = F.cross_entropy(q @ k.T / 2.0, torch.arange(4))
    assert torch.allclose(out.loss.double(), ref)


def test_similarities_are_float32_under_mixed_precision():
    q, k = torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = InfoNCE(0.07)(q, k)
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, InfoNCE(0.07)(q.float(), k.float()).loss, rtol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="negatives"):
        InfoNCE(0.1, batch_negatives=False)(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="query_negatives"):
        InfoNCE(0.1, batch_negatives=False, query_negatives=True)
    with pytest.raises(ValueError, match=r"\[K, D\] or \[B, K, D\]"):
        InfoNCE(0.1)(torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 4, 3))


# --------------------------------------------------------------------------- queue


def test_queue_is_fifo_with_fixed_size_and_normalised_rows():
    queue = Queue(5, 3)
    assert len(queue) == 0 and queue.negatives().shape == (0, 3)
    pushed = []
    for step in range(4):  # 3 keys per push: 3, 5 (wraps), 5, 5 rows
        keys = torch.randn(3, 3) + step
        queue.push(keys)
        pushed.append(F.normalize(keys, dim=1))
        expected = torch.cat(pushed)[-5:]
        assert len(queue) == min(3 * (step + 1), 5)
        assert torch.allclose(queue.ordered(), expected), step  # oldest first, newest last
        assert queue.negatives().shape == (len(queue), 3)
    assert int(queue.ptr) == (4 * 3) % 5


def test_queue_push_larger_than_queue_keeps_the_newest():
    queue = Queue(4, 2)
    keys = torch.randn(7, 2)
    queue.push(keys)
    assert torch.allclose(queue.ordered(), F.normalize(keys[-4:], dim=1))


def test_queue_negatives_survive_a_push_before_backward():
    queue = Queue(6, 4, random_init=True)
    assert len(queue) == 6
    q = torch.randn(2, 4, requires_grad=True)
    out = InfoNCE(0.2, batch_negatives=False)(q, torch.randn(2, 4), queue.negatives())
    queue.push(torch.randn(2, 4))  # MoCo enqueues before the backward pass
    out.loss.backward()
    assert q.grad is not None


# --------------------------------------------------------------------------- momentum


def test_ema_update_is_exact():
    torch.manual_seed(0)
    online, target = nn.Linear(4, 3), nn.Linear(4, 3)
    old = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, 0.9)
    for p, o, q in zip(target.parameters(), old, online.parameters()):
        assert torch.equal(p, o.mul(0.9).add(q.detach(), alpha=1 - 0.9))


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.99) == 0.99
    assert math.isclose(cosine_momentum(50, 100, 0.99), 0.995)
    assert cosine_momentum(100, 100, 0.99) == 1.0
    assert cosine_momentum(200, 100, 0.99) == 1.0
    values = [cosine_momentum(s, 10, 0.9, 0.99) for s in range(11)]
    assert values == sorted(values)


def test_teacher_is_frozen_and_follows_the_schedule():
    torch.manual_seed(0)
    enc, head = nn.Linear(3, 4), nn.Linear(4, 2)
    teacher = MomentumTeacher(enc, head, 0.9)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher(torch.ones(1, 3)), head(enc(torch.ones(1, 3))))
    with torch.no_grad():
        enc.weight.add_(1.0)
    before = teacher.encoder.weight.clone()
    m = teacher.update(3, 10)
    assert m == cosine_momentum(3, 10, 0.9) and teacher.current == m
    assert torch.equal(teacher.encoder.weight, before.mul(m).add(enc.weight.detach(), alpha=1 - m))


# --------------------------------------------------------------------------- BatchNorm groups


def test_bn_groups_keep_two_samples_per_group():
    assert bn_groups(256, 8) == 8
    assert bn_groups(8, 8) == 4
    assert bn_groups(3, 8) == 1
    bn = nn.BatchNorm1d(2, affine=False)
    x = torch.randn(8, 2)
    y = grouped_forward(bn, x, 2)
    assert torch.allclose(y[:4], F.batch_norm(x[:4], None, None, training=True))
    assert torch.allclose(y[4:], F.batch_norm(x[4:], None, None, training=True))


def test_shuffled_forward_restores_order_and_uses_shuffled_groups():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    per_sample = nn.Linear(3, 2)
    assert torch.allclose(shuffled_forward(per_sample, x, splits=4), per_sample(x), atol=1e-6)
    bn = nn.BatchNorm1d(3, affine=False)
    perm = torch.tensor([5, 0, 7, 2, 1, 6, 3, 4])
    y = shuffled_forward(bn, x, splits=2, perm=perm)
    for group in (perm[:4], perm[4:]):  # sample perm[j] is normalised with the others of its group
        assert torch.allclose(y[group], F.batch_norm(x[group], None, None, training=True), atol=1e-6)


# --------------------------------------------------------------------------- methods


def test_moco_step_scores_the_queue_and_enqueues_the_keys(tiny_config):
    from selfsup.train.module import PretrainModule

    torch.manual_seed(0)
    assert len(PretrainModule(tiny_config("method.queue_size=20", "method.proj_hidden_dim=32", method="moco"),
                              INFO).method.queue) == 20  # the paper's start: random keys
    module = PretrainModule(tiny_config("method.queue_size=20", "method.proj_hidden_dim=32", "method.bn_splits=2",
                                        "method.random_init_queue=false", method="moco"), INFO)
    moco = module.method
    assert moco.exported_encoder() is moco.encoder
    assert len(moco.queue) == 0  # only real keys are negatives
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    out = moco.training_step(images)
    assert float(out["loss"].detach()) == 0 and float(out["mi_bound"]) == 0  # the positive alone: log(1) - 0
    assert len(moco.queue) == 6 and int(moco.queue.ptr) == 6
    assert torch.allclose(moco.queue.ordered().norm(dim=1), torch.ones(6))
    for filled in (6, 12, 18):  # negatives scored at this step; the queue holds 20 at most
        negatives = moco.queue.ordered().clone()  # [filled, P]: earlier steps' keys
        queries = []
        hook = moco.projector.register_forward_hook(lambda m, args, out: queries.append(out.detach()))
        out = moco.training_step(images)
        hook.remove()
        keys = moco.queue.ordered()[-6:]  # this step's keys, as enqueued
        ref, n = naive(queries[0].double(), keys.double(), moco.cfg.temperature, negatives=negatives.double(),
                       batch=False)  # its positive key and the queue, computed here
        assert n == 1 + filled
        assert math.isclose(float(out["loss"].detach()), float(ref), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(float(out["mi_bound"]), math.log(n) - float(ref), rel_tol=1e-5, abs_tol=1e-5)
        assert len(moco.queue) == min(filled + 6, 20)
    before = [p.clone() for p in moco.teacher.encoder.parameters()]
    moco.on_train_step_end(1, 10)
    m = cosine_momentum(1, 10, moco.cfg.momentum)
    for p, b, o in zip(moco.teacher.encoder.parameters(), before, moco.encoder.parameters()):
        assert torch.equal(p, b.mul(m).add(o.detach(), alpha=1 - m))


def test_mocov3_runs_on_a_vit_and_scales_by_two_tau(tiny_config):
    from selfsup.train.module import PretrainModule

    vit = ["encoder.name=vit_tiny_patch16_224",
           "encoder.kwargs={img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
           "method.proj_hidden_dim=32", "method.pred_hidden_dim=32", "method.proj_dim=16"]
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    losses = {}
    for scale in (True, False):
        torch.manual_seed(0)
        module = PretrainModule(tiny_config(*vit, f"method.scale_loss={str(scale).lower()}",
                                            "method.freeze_patch_embed=true", method="mocov3"), INFO)
        method = module.method
        assert method.temperature == 0.2  # the ViT default
        assert not any(p.requires_grad for p in method.encoder.patch_embed.parameters())
        torch.manual_seed(1)
        out = method.training_step(images)
        losses[scale] = out["loss"]
        out["loss"].backward()
        no_grad = [n for n, p in method.encoder.blocks.named_parameters() if p.grad is None or not p.grad.ne(0).any()]
        assert not no_grad, f"blocks the loss does not reach: {no_grad[:5]}"
    assert torch.allclose(losses[True], 2 * 0.2 * losses[False])
    resnet = PretrainModule(tiny_config("method.proj_hidden_dim=32", "method.pred_hidden_dim=32",
                                        method="mocov3"), INFO)
    assert resnet.method.temperature == 1.0


def layer_spec(head):
    """A head as plain tuples: ("linear", in, out, has bias), ("bn", dim, affine), ("relu",)."""
    spec = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            spec.append(("linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.BatchNorm1d):
            spec.append(("bn", layer.num_features, layer.affine))
        else:
            assert isinstance(layer, nn.ReLU), layer
            spec.append(("relu",))
    return spec


def moco_v3_reference_mlp(num_layers, in_dim, hidden, out, last_bn):
    """facebookresearch/moco-v3 moco/builder.py MoCo._build_mlp, described layer by layer: every
    linear without a bias, BatchNorm (affine) + ReLU after each hidden one, and a BatchNorm without
    affine parameters after the last one when ``last_bn``."""
    spec = []
    for i in range(num_layers):
        d_in, d_out = in_dim if i == 0 else hidden, out if i == num_layers - 1 else hidden
        spec.append(("linear", d_in, d_out, False))
        if i < num_layers - 1:
            spec += [("bn", d_out, True), ("relu",)]
        elif last_bn:
            spec.append(("bn", d_out, False))
    return spec


VIT_16 = ["encoder.name=vit_tiny_patch16_224",
          "encoder.kwargs={img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}"]
HEADS = ["method.proj_hidden_dim=24", "method.pred_hidden_dim=40", "method.proj_dim=16"]


@pytest.mark.parametrize("encoder, overrides, proj, pred", [
    # the reference code's MoCo_ViT: a 3-layer projector and a predictor, both ending in BN(affine=False)
    ("vit", [], (3, 32, True), (2, True)),
    # its MoCo_ResNet: a 2-layer projector ending in that BN, a predictor ending in a plain linear layer
    ("resnet", [], (2, 64, True), (2, False)),
    # explicit choices override the per-encoder defaults
    ("vit", ["method.pred_last_bn=false", "method.proj_layers=2"], (2, 32, True), (2, False)),
    ("resnet", ["method.pred_last_bn=true", "method.proj_layers=3", "method.pred_layers=3"], (3, 64, True),
     (3, True)),
])
def test_mocov3_heads_are_built_as_in_the_reference_code(tiny_config, encoder, overrides, proj, pred):
    from selfsup.train.module import PretrainModule

    enc = VIT_16 if encoder == "vit" else []
    method = PretrainModule(tiny_config(*enc, *HEADS, *overrides, method="mocov3"), INFO).method
    (proj_layers, feat_dim, proj_last_bn), (pred_layers, pred_last_bn) = proj, pred
    assert layer_spec(method.projector) == moco_v3_reference_mlp(proj_layers, feat_dim, 24, 16, proj_last_bn)
    assert layer_spec(method.predictor) == moco_v3_reference_mlp(pred_layers, 16, 40, 16, pred_last_bn)
    last = method.predictor[-1]
    if pred_last_bn:  # the predictor's output is standardised per dimension, with nothing to learn
        assert isinstance(last, nn.BatchNorm1d) and not last.affine and not list(last.parameters())
    else:
        assert isinstance(last, nn.Linear) and last.bias is None
