"""A tiny local checkpoint with its JSON sidecar and a photo, for the CLI tests (never the network)."""
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import FAMILIES, make_timm


@pytest.fixture
def checkpoint(tmp_path):
    name, kwargs = FAMILIES["dinov2"]
    save_file(make_timm("dinov2").state_dict(), str(tmp_path / "tiny.safetensors"))
    (tmp_path / "tiny.json").write_text(json.dumps({
        "timm_model_name": name, "create_model_kwargs": kwargs, "class_names": [f"class_{i}" for i in range(7)],
        "data_config": {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic",
                        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    image = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype("uint8")).save(image)
    return tmp_path / "tiny.safetensors", image
