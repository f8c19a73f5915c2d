"""RotNet targets: label r means the image was turned r * 90 degrees counter-clockwise."""

import torch

from selfsup.methods.rotation import rotation_batch


def test_labels_and_rotations():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    rot, labels = rotation_batch(x)
    assert rot.shape == (8, 1, 3, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):
        r, b = int(labels[i]), i % 2
        # undoing the labelled rotation restores the original image
        assert torch.equal(torch.rot90(rot[i], -r, dims=(1, 2)), x[b])


def test_quarter_turn_is_counter_clockwise():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1  # top-right pixel
    rot, labels = rotation_batch(x)
    quarter = rot[labels == 1][0, 0]
    assert quarter[0, 0] == 1  # top-right goes to top-left under a counter-clockwise quarter turn
    half = rot[labels == 2][0, 0]
    assert half[2, 0] == 1
