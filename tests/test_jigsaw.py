"""Jigsaw: the permutation set, tiles, shuffling and the one batched forward over B*9 tiles."""

import pytest
import torch

from selfsup.encoders import create_encoder
from selfsup.methods.jigsaw import (Jigsaw, JigsawConfig, assemble_tiles, cut_tiles, hamming_distances,
                                    inverse_permutations, max_hamming_permutations, normalise_tiles,
                                    random_offsets, shuffle_tiles, tile_geometry)


def min_distance(perms: torch.Tensor) -> int:
    d = hamming_distances(perms)
    d.fill_diagonal_(10)
    return int(d.min())


def test_permutation_set_is_valid_distinct_and_deterministic():
    perms = max_hamming_permutations(100, seed=0)
    assert perms.shape == (100, 9) and perms.dtype == torch.long
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(100, 9))  # each row a permutation
    assert len({tuple(p) for p in perms.tolist()}) == 100  # no duplicates
    assert torch.equal(perms, max_hamming_permutations(100, seed=0))
    assert not torch.equal(perms, max_hamming_permutations(100, seed=1))


@pytest.mark.parametrize("num", [100, 1000])
def test_min_hamming_distance_is_far_above_random_sets(num):
    chosen = min_distance(max_hamming_permutations(num, seed=0))
    g = torch.Generator().manual_seed(0)
    random_mins = [min_distance(torch.stack([torch.randperm(9, generator=g) for _ in range(num)]))
                   for _ in range(10)]
    assert max(random_mins) <= 3  # random sets of this size almost always hold a 2- or 3-cycle
    assert chosen >= max(random_mins) + 2, (chosen, random_mins)
    # the paper's own criterion, the average distance, stays near its maximum too (9 is a derangement)
    d = hamming_distances(max_hamming_permutations(num, seed=0)).float()
    assert d.sum() / (num * (num - 1)) > 7.9


def test_inverse_permutation_restores_the_image():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 12, 12)
    tiles = cut_tiles(x, 4, torch.zeros(5, 9, 2, dtype=torch.long))  # no gaps: the tiles cover the image
    assert torch.equal(assemble_tiles(tiles), x)
    perms = max_hamming_permutations(100, seed=0)[torch.tensor([0, 7, 42, 99, 3])]
    shuffled = shuffle_tiles(tiles, perms)
    assert not torch.equal(assemble_tiles(shuffled), x)
    for b in range(5):  # position i shows tile perms[b, i]
        for i in range(9):
            assert torch.equal(shuffled[b, i], tiles[b, perms[b, i]])
    restored = shuffle_tiles(shuffled, inverse_permutations(perms))
    assert torch.equal(assemble_tiles(restored), x)


def test_tiles_come_from_their_cells_at_the_given_offsets():
    x = torch.arange(2 * 1 * 57 * 57, dtype=torch.float32).reshape(2, 1, 57, 57)
    offsets = random_offsets(2, cell=19, tile=16)
    assert offsets.min() >= 0 and offsets.max() <= 3
    tiles = cut_tiles(x, 16, offsets)  # [2, 9, 1, 16, 16]
    for b in range(2):
        for k in range(9):
            r, c = k // 3 * 19 + int(offsets[b, k, 0]), k % 3 * 19 + int(offsets[b, k, 1])
            assert torch.equal(tiles[b, k], x[b, :, r:r + 16, c:c + 16])
    with pytest.raises(ValueError):
        cut_tiles(x, 16, torch.full((2, 9, 2), 4))  # would leave the cell


def test_each_tile_is_normalised_on_its_own():
    tiles = torch.randn(4, 9, 3, 16, 16) * (torch.rand(4, 9, 1, 1, 1) * 5 + 0.5) + torch.randn(4, 9, 1, 1, 1)
    out = normalise_tiles(tiles)
    assert torch.allclose(out.mean(dim=(2, 3, 4)), torch.zeros(4, 9), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3, 4), unbiased=False), torch.ones(4, 9), atol=1e-3)
    assert torch.equal(normalise_tiles(torch.full((1, 9, 1, 4, 4), 7.0)), torch.zeros(1, 9, 1, 4, 4))


def test_tile_size_follows_the_image_with_a_floor():
    assert tile_geometry(224) == (64, 75)  # the paper: 64 px tiles in 75 px cells of a 225 px crop
    assert tile_geometry(28) == (16, 19)  # Fashion-MNIST: at least 16 px per tile
    assert tile_geometry(32, min_tile_size=8) == (9, 11)
    assert tile_geometry(28, tile_size=20, tile_fraction=1.0) == (20, 20)  # no gaps


@pytest.fixture
def tiny_jigsaw():
    def make(**kw):
        from conftest import TINY_INFO as info
        enc = create_encoder("resnet18", 1, {"channels": [8, 16, 32, 64]})
        cfg = JigsawConfig(**{"head_hidden_dim": 64, **kw})
        return Jigsaw(cfg, enc, info)

    return make


def test_one_batched_forward_over_all_tiles_and_labels_match(tiny_jigsaw):
    torch.manual_seed(0)
    method = tiny_jigsaw(num_permutations=30)
    calls = []
    method.encoder.register_forward_hook(lambda m, inp, out: calls.append((inp[0].shape, out.shape)))
    out = method.training_step(torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8))
    assert calls == [((54, 1, 16, 16), (54, 64))]  # B*9 tiles of 16 px, once
    assert out["features"].shape == (6, 64) and torch.isfinite(out["loss"])
    assert 0 <= float(out["jigsaw_acc"]) <= 1
    assert method.head[0].in_features == 9 * 64 and method.head[-1].out_features == 30

    x = torch.randn(4, 1, 57, 57)
    torch.manual_seed(1)
    shuffled, labels = method.transform(x)
    torch.manual_seed(1)
    tiles = normalise_tiles(cut_tiles(x, 16, random_offsets(4, 19, 16)))
    assert torch.equal(shuffle_tiles(shuffled, inverse_permutations(method.permutations[labels])), tiles)


def test_permutation_set_is_saved_and_loaded_with_the_state(tiny_jigsaw):
    a, b = tiny_jigsaw(permutation_seed=0), tiny_jigsaw(permutation_seed=5)
    assert "permutations" in a.state_dict()
    assert not torch.equal(a.permutations, b.permutations)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.permutations, b.permutations)
