"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download) written as an ImageFolder tree of JPEGs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

TEST_SHARE = 0.2


def write_digits_imagefolder(root: Path, size: int = 32, seed: int = 0) -> Path:
    """root/train/<digit>/*.jpg and root/test/<digit>/*.jpg (a stratified 80/20 split), upscaled to size x size RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_test = int(round(len(members) * TEST_SHARE))
        for split, chosen in (("test", members[:n_test]), ("train", members[n_test:])):
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                gray = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
                image = Image.fromarray(gray, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
                image.save(folder / f"{index:04d}.jpg", quality=95)
    return root


if __name__ == "__main__":  # python tests/digits_data.py OUT_DIR: the tree the README's commands use
    print(write_digits_imagefolder(Path(sys.argv[1])))
