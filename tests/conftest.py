import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from px_hf.digits import load_digits  # noqa: E402
from px_hf.zoo import FAMILIES, small_model  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """All 1797 digits at 32x32, one channel."""
    return load_digits(image_size=32)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def model(family):
    return small_model(family, seed=0)


def prunable_state(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def image_folder(tmp_path):
    """An image folder (one sub-directory per class) of 60 digits as 16x16 grayscale PNGs."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "images"
    x, y = load_digits(image_size=16)
    for i in range(60):
        folder = root / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((x[i, 0].numpy() + 1) * 127.5).astype(np.uint8)).save(folder / f"{i}.png")
    return root
