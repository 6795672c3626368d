"""CNN-CAAP vs Simple Insertion (K=196 input-level forwards), random timm CNNs at 224 px, one image.

Usage: python benchmarks/bench_cnn.py resnet18 [resnet50 ...] (wrap in flock /tmp/heavy.lock for the larger ones)."""
import statistics, sys, time, torch, timm
from caap import SimpleInsertion
from caap.cnn import CNNCAAP
for name in sys.argv[1:]:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    caap, ins = CNNCAAP(m), SimpleInsertion(m, progress=False)
    x = torch.randn(1, 3, 224, 224)
    ta, ti = [], []
    for _ in range(3):
        t = time.perf_counter(); caap.attribute(x, 1); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); ins.attribute(x, 1); ti.append(time.perf_counter() - t)
    a, i = statistics.median(ta), statistics.median(ti)
    print(f"{name} 224px, K=196: CNN-CAAP {a:.2f} s, Simple Insertion {i:.2f} s, ratio {a / i:.2f} (median of 3 interleaved rounds)")
