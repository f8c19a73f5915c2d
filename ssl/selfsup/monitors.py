"""Label-free quality signals of an embedding: RankMe, alignment and uniformity.

A user pretraining on an unlabeled folder has no kNN or probe to tell whether the features
are any good; these statistics need no labels and are cheap next to a training step.

- RankMe (Garrido, Balestriero, Najman, LeCun 2023, "RankMe: Assessing the Downstream
  Performance of Pretrained Self-Supervised Representations by Their Rank", eq. 1): the
  effective rank of the embedding matrix, ``exp`` of the entropy of its normalised singular
  values. Between 1 (every embedding on one line: collapse) and ``min(N, D)``.
- Alignment and uniformity (Wang & Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere", eqs. 4-5 with their
  defaults alpha = 2, t = 2), on L2-normalised embeddings: alignment is the mean distance
  between the two views of an image (lower: more invariant); uniformity the log of the mean
  Gaussian potential over pairs of distinct images (lower, down to about -4 at t = 2: spread
  more evenly over the sphere).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RANKME_EPS = 1e-7  # Garrido et al. 2023, eq. 1
COLLAPSE_FRACTION = 0.01  # warn when RankMe falls below this share of the embedding width
# below this relative spread cosine similarity cannot reliably tell the rows apart in float32 (eps 6e-8, and a
# D-term dot product rounds at about sqrt(D) eps): random-init efficientvit_b0's stages.2 at 2e-8 scored kNN 17%,
# ghostnet_100 at 1.2e-7 32% while its probe read 82%; ordinary random-init features are at 1e-2 and above
CONSTANT_SPREAD = 1e-6


def _matrix(z: Tensor, what: str) -> Tensor:
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"{what} needs embeddings [N, D] with N >= 2, got shape {tuple(z.shape)}")
    if not bool(z.isfinite().all()):
        raise ValueError(f"{what}: the embeddings hold NaN or inf; the encoder diverged")
    return z.detach().double()


def rankme(z: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of embeddings ``z`` [N, D]: ``exp(-sum_k p_k log p_k)`` with
    ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular values ``sigma`` of ``z``
    (Garrido et al. 2023, eq. 1; the embeddings are not centred, as in the paper). A unitless
    effective rank in [1, min(N, D)]. ValueError on a non-2-D input, N < 2 or non-finite
    values."""
    sigma = torch.linalg.svdvals(_matrix(z, "RankMe"))  # [min(N, D)]
    if float(sigma.sum()) == 0.0:
        return 1.0  # all-zero embeddings: nothing spans more than a point
    p = sigma / sigma.sum() + eps
    return math.exp(float(-(p * p.log()).sum()))


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Mean ``||f(x) - f(y)||_2 ** alpha`` over the positive pairs (row i of ``z1`` [N, D] with
    row i of ``z2`` [N, D]), after L2 normalisation (Wang & Isola 2020, eq. 4; alpha = 2).
    In [0, 2 ** alpha]; 0 when both views embed identically."""
    a, b = _matrix(z1, "alignment"), _matrix(z2, "alignment")
    if a.shape != b.shape:
        raise ValueError(f"alignment needs the two views' embeddings of the same images, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2.0) -> float:
    """``log`` of the mean ``exp(-t ||f(x) - f(y)||_2^2)`` over the N(N-1)/2 pairs of distinct
    rows of ``z`` [N, D], after L2 normalisation (Wang & Isola 2020, eq. 5; t = 2). At most 0
    (every embedding the same point), at least -4t (squared distances on the unit sphere are at
    most 4); lower when they spread out."""
    x = F.normalize(_matrix(z, "uniformity"), dim=1)
    return float(torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log())


def relative_spread(z: Tensor) -> float:
    """How much embeddings ``z`` [N, D] vary across rows relative to their size: the total variance
    (the sum over columns of the population variance over rows) over the mean squared row norm. A
    unitless number in [0, 1]: 0 when every row is the same vector (or all are zero), 1 when the rows
    are centred. ValueError on a non-2-D input, N < 2 or non-finite values."""
    x = _matrix(z, "the spread")
    size = float(x.pow(2).sum(1).mean())
    return 0.0 if size == 0.0 else float(x.var(0, unbiased=False).sum()) / size


def collapse_warning(rank: float, dim: int, fraction: float = COLLAPSE_FRACTION,
                     rows: int | None = None) -> str | None:
    """A one-line warning when RankMe ``rank`` is below ``fraction`` of the largest rank the matrix can have,
    ``min(rows, dim)`` (``rows``: the embeddings it was measured on; None: ``dim`` alone), or below 1.5 (hardly
    more than one direction) whatever the width; None otherwise. RankMe of ``rows`` embeddings is at most
    ``rows``: 30 test images of a 4,096-d stage cannot reach 1% of 4,096, and were called collapsed."""
    reach = dim if rows is None else min(rows, dim)
    if reach > 1 and rank < max(fraction * reach, 1.5):
        below = f"below {fraction:.0%}" if fraction * reach >= 1.5 else "below 1.5, hardly more than one direction"
        of = (f"{dim} dimensions" if reach == dim
              else f"the {reach} that {rows} embeddings of {dim} dimensions can reach")
        return (f"RankMe {rank:.2f} of {of} ({below}): the embeddings have collapsed "
                f"onto a few directions; lower the learning rate, check the augmentation, or raise the "
                f"temperature / weight decay")
    return None
