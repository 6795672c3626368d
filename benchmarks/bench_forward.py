"""HookedViT forward vs timm forward (ViT-B/16, 224 px, batch 8, random weights), measured in one run.

Prints two ratios: HookedViT (no hooks) / timm, and run_with_cache (every hook) / timm.
Targets: <= 1.10 and <= 1.5.
"""
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from vit_lens import HookedViT  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    x = torch.randn(8, 3, 224, 224)
    t_timm = median_seconds(lambda: timm_model(x))
    t_hooked = median_seconds(lambda: model(x))
    t_cache = median_seconds(lambda: model.run_with_cache(x))
    t_timm_again = median_seconds(lambda: timm_model(x))  # guard against drift during the run
    t_timm = min(t_timm, t_timm_again)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"timm forward             {t_timm * 1e3:8.1f} ms")
    print(f"HookedViT forward        {t_hooked * 1e3:8.1f} ms   ratio {t_hooked / t_timm:5.2f} (target <= 1.10)")
    print(f"run_with_cache(all hooks) {t_cache * 1e3:7.1f} ms   ratio {t_cache / t_timm:5.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
