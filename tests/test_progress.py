"""Progress bars: drawn on a terminal (rank 0, SELFSUP_QUIET unset) for feature extraction, the kNN
search, the probe grid and seeds and the decoded-image cache; absent otherwise; never a change
in any number."""

from __future__ import annotations

import io
import sys

import numpy as np
import torch
from PIL import Image

from selfsup import distributed, progress
from selfsup.data import DataInfo, TensorImages
from selfsup.data.imagefiles import FolderImages
from selfsup.data.decoded import decode_all
from selfsup.eval.features import extract_features
from selfsup.eval.search import IndexOptions, search
from selfsup.eval.linear import probe_protocol


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def use_terminal(monkeypatch) -> Terminal:
    """stderr that says it is a terminal (set in the test body: pytest's capture resets sys.stderr
    between a fixture's setup and the test); returns it to read what was written."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv(progress.QUIET_ENV, raising=False)
    return stream


def test_bars_only_on_a_terminal_of_rank_zero_without_quiet(monkeypatch):
    terminal = use_terminal(monkeypatch)
    items = [1, 2, 3]
    bar = progress.progress(items, "counting")
    assert bar is not items and list(bar) == items and "counting" in terminal.getvalue()
    monkeypatch.setenv(progress.QUIET_ENV, "1")  # selfsup --quiet
    assert progress.progress(items, "counting") is items
    monkeypatch.setenv(progress.QUIET_ENV, "0")  # "0" is not quiet
    assert progress.progress(items, "counting") is not items
    monkeypatch.setattr(distributed, "rank", lambda: 1)  # other ranks stay silent
    assert progress.progress(items, "counting") is items
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert progress.progress(items, "counting") is items
    with progress.Bar("silent", 3) as bar:
        bar.update()  # a no-op without a terminal


def _features(n: int = 96, d: int = 16, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return torch.randn(n, d, generator=g) + 3 * torch.nn.functional.one_hot(y, d).float(), y


def test_extraction_knn_and_probes_draw_bars_with_unchanged_numbers(monkeypatch):
    terminal = use_terminal(monkeypatch)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImages(images, torch.arange(40) % 4, 4)
    info = DataInfo(1, 8, 4, (0.5,), (0.25,), 40)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    x, y = _features()
    xt, yt = _features(seed=1)

    def run():
        feats = extract_features(encoder, ds, info, batch_size=16)
        sims, idx = search(x, xt, 5, IndexOptions(chunk_rows=32, query_rows=40))
        probes = probe_protocol(x, y, xt, yt, 4, [0.1, 0.3], [0.0], fractions=(1.0, 0.5), seeds=2, epochs=3,
                                batch_size=32)
        return feats, sims, idx, probes

    shown = run()
    text = terminal.getvalue()
    for desc in ("features", "kNN search (train chunks)", "linear probes (2 label fraction(s) x 2 seed(s))",
                 "linear probe: 2 setting(s) x 1 seed(s), ",  # the grid on 90%
                 "linear probe: 1 setting(s) x 2 seed(s), 96 rows"):  # the refit on all, both seeds at once
        assert desc in text, desc
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    terminal.seek(0)
    terminal.truncate()
    quiet = run()
    assert terminal.getvalue() == ""
    assert torch.equal(shown[0][0], quiet[0][0]) and torch.equal(shown[2], quiet[2])
    assert torch.equal(shown[1], quiet[1]) and shown[3] == quiet[3]


def test_the_decoded_cache_build_draws_a_bar(monkeypatch, tmp_path):
    terminal = use_terminal(monkeypatch)
    files = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((6, 6, 3), 40 * i, dtype=np.uint8)).save(path)
        files.append(str(path))
    ds = FolderImages(files, [0] * 5, 1, 4, 3)
    labels, skipped = decode_all(ds, tmp_path / "decoded.u8", num_workers=0)
    assert labels == [0] * 5 and skipped == [] and "decoding 5 images once" in terminal.getvalue()
    assert (tmp_path / "decoded.u8").stat().st_size == 5 * 3 * 4 * 4
