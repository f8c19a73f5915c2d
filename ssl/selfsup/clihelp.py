"""What the command line shows before it imports torch: ``selfsup list``'s one line per method and
dataset, and the numbers in ``selfsup export --help``. These are copies, so that ``selfsup --help``,
``selfsup CMD --help`` and ``selfsup list`` start in well under a second; tests/test_cli_fast.py
checks every entry against what it describes (the method and dataset registries and their
docstrings, selfsup.artifacts.interop), so a copy cannot go stale unnoticed."""

from __future__ import annotations

# method name -> its docstring's leading name (up to the citation), then what it trains on
METHODS = {
    "cpc": "Contrastive predictive coding on images, CPC v2: predict later patch rows' embeddings",
    "denoise": "Denoising as a pretext, in the parametrisation of EDM: predict the clean image",
    "dim": "Deep InfoMax, the local objective: the global feature against its image's local features",
    "jigsaw": "Jigsaw puzzles: which permutation shuffled a 3x3 grid of tiles",
    "mae": "Masked autoencoders: reconstruct masked patches from the visible ones (ViT)",
    "moco": "MoCo v2: InfoNCE against a momentum encoder's queue of negatives",
    "mocov3": "MoCo v3: two views, a momentum encoder and in-batch negatives",
    "npid": "Non-parametric instance discrimination: every image its own class, a memory bank",
    "pirl": "Pretext-invariant representation learning: an image and its jigsaw transform agree",
    "rotation": "RotNet: predict which of four rotations an image is shown at",
    "simclr": "SimCLR: two augmented views, NT-Xent over the batch",
    "simmim": "SimMIM: predict the pixels of masked patches (any timm encoder: ViT, convnet)",
    "supervised": "Supervised pretraining: cross-entropy on the class labels (a reference)",
}

# dataset name -> the first line of its builder's docstring
DATASETS = {
    "cifar10": "CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 RGB, 10 classes.",
    "cifar100": "CIFAR-100 (Krizhevsky 2009): 50k/10k 32x32 RGB, 100 classes.",
    "digits": "scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 stratified with seed 0.",
    "fashion-mnist": "Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grayscale, 10 classes.",
    "image-folder": "Any folder of images. Class subfolders give labels; a flat folder is unlabeled.",
    "mnist": "MNIST (LeCun et al. 1998): 60k/10k 28x28 grayscale digits.",
    "stl10": "STL-10 (Coates et al. 2011): 96x96 RGB; pretraining uses train+unlabeled (105k).",
}

# selfsup.artifacts.interop's FORMAT_FILES, ONNX_OPSET and FEATURE_RTOL
FORMAT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx",
                "torchvision": "model.torchvision.safetensors"}
ONNX_OPSET = 17
FEATURE_RTOL = 1e-4


def list_text() -> str:
    """What ``selfsup list`` prints: methods, datasets and where encoders come from."""
    lines = ["methods:", *(f"  {name:14s} {text}" for name, text in METHODS.items()), "datasets:",
             *(f"  {name:14s} {text}" for name, text in DATASETS.items()),
             "encoders: any timm model name (encoder.name=...), e.g. resnet18, resnet50, vit_small_patch16_224;",
             "  list them with: python -c \"import timm; print(timm.list_models('*resnet*'))\"",
             "config keys: selfsup config [KEY_PREFIX] (type, default, range and help of each)"]
    return "\n".join(lines) + "\n"
