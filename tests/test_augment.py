"""Batched augmentation: per-sample parameters, exact identity/flip limits, photometric ranges."""

import torch

from selfsup.data.augment import AugmentConfig, BatchAugment, crop_flip_theta, gaussian_blur, resample, rotate_hue

NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0)


def test_full_crop_without_flip_is_identity():
    x = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, **NO_COLOUR),
                       (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 12)
    assert torch.allclose(aug(x), x.float() / 255, atol=1e-5)


def test_flip_only_mirrors_exactly():
    x = torch.rand(3, 1, 8, 8)
    theta = crop_flip_theta(3, (1.0, 1.0), (1.0, 1.0), hflip=1.0, device=torch.device("cpu"))
    assert torch.allclose(resample(x, theta, 8), x.flip(-1), atol=1e-5)


def test_parameters_differ_per_sample_and_output_is_normalised():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).repeat(64, 1, 1, 1)  # one image, 64 copies
    aug = BatchAugment(AugmentConfig(blur_p=0.5, solarize_p=0.2), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 10)
    out = aug(x)
    assert out.shape == (64, 3, 10, 10)
    flat = out.flatten(1)
    distinct = torch.cdist(flat, flat)[~torch.eye(64, dtype=torch.bool)]
    assert (distinct > 1e-3).all()  # no two copies got the same view
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-4 and out.max() <= (1 - 0.5) / 0.25 + 1e-4


def test_crop_area_follows_scale():
    theta = crop_flip_theta(10000, (0.25, 0.25), (1.0, 1.0), 0.0, torch.device("cpu"))
    area = theta[:, 0, 0].abs() * theta[:, 1, 1]
    assert torch.allclose(area, torch.full_like(area, 0.25), atol=1e-5)
    # the crop stays inside the image: |centre| + half-size <= 1
    assert (theta[:, 0, 2].abs() + theta[:, 0, 0].abs() <= 1 + 1e-6).all()


def test_hue_rotation_keeps_gray_and_full_turn_is_identity():
    gray = torch.full((2, 3, 4, 4), 0.4)
    assert torch.allclose(rotate_hue(gray, torch.tensor([0.3, -0.2])), gray, atol=1e-5)
    x = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    assert torch.allclose(rotate_hue(x, torch.tensor([1.0, 0.0])), x, atol=1e-4)


def test_blur_preserves_constant_images_and_smooths_noise():
    const = torch.full((2, 1, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(const, torch.tensor([1.0, 2.0])), const, atol=1e-5)
    noise = torch.rand(2, 1, 32, 32)
    blurred = gaussian_blur(noise, torch.tensor([0.1, 2.0]))
    assert blurred[1].std() < 0.5 * noise[1].std()
    assert torch.allclose(blurred[0], noise[0], atol=1e-3)  # sigma 0.1 is nearly a delta
