# Copied unchanged (below this header) from ../shared/peer/peer_torch_kd.py, the PyTorch peer of
# ../shared/PERFORMANCE.md, so that benchmarks/gpu_issue6.sh can run it on a device machine,
# where the repository's parent folder is not there. Do not edit: update it from the source.
"""Peer anchor: a RepDistiller-style PyTorch KD train step (CIFAR ResNets), timed on one GPU.

Teacher resnet32x4 (frozen, eval mode), student resnet8x4, loss = CE + KL(T=4)*T^2.
Data is random CIFAR-shaped tensors resident on the device, so only the step is timed.
Variants: fp32 eager, bf16 autocast + channels_last eager, and torch.compile of the latter.
Prints one JSON line per (variant, batch): images/s (median of repeats).
"""
import json, sys, time
import torch, torch.nn as nn, torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        o = F.relu(self.b1(self.c1(x)))
        o = self.b2(self.c2(o))
        return F.relu(o + (x if self.sc is None else self.sc(x)))


class ResNet(nn.Module):
    def __init__(self, depth, filters, classes=100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, filters[0], 3, 1, 1, bias=False); self.bn = nn.BatchNorm2d(filters[0])
        layers, cin = [], filters[0]
        for i, (f, s) in enumerate(zip(filters[1:], (1, 2, 2))):
            for j in range(n):
                layers.append(Block(cin, f, s if j == 0 else 1)); cin = f
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def kd_loss(s, t, y, T=4.0):
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return F.cross_entropy(s, y) + kl


def run(variant, batch, steps=60, warm=15):
    dev = "cuda"
    teacher = ResNet(32, [32, 64, 128, 256]).to(dev).eval()
    student = ResNet(8, [32, 64, 128, 256]).to(dev).train()
    cl = variant != "fp32_eager"
    if cl:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    xs = [torch.randn(batch, 3, 32, 32, device=dev) for _ in range(4)]
    if cl:
        xs = [x.to(memory_format=torch.channels_last) for x in xs]
    ys = [torch.randint(0, 100, (batch,), device=dev) for _ in range(4)]

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cl):
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            loss = kd_loss(s.float(), t.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if variant == "bf16_compile":
        step = torch.compile(step)
    t0 = time.time()
    for i in range(warm):
        step(xs[i % 4], ys[i % 4])
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    rates = []
    for r in range(3):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for i in range(steps):
            step(xs[i % 4], ys[i % 4])
        torch.cuda.synchronize()
        rates.append(batch * steps / (time.perf_counter() - t0))
    rates.sort()
    return {"peer": "torch", "variant": variant, "batch": batch, "img_per_s": round(rates[1]),
            "warmup_s": round(compile_s, 1), "torch": torch.__version__}


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    variants = sys.argv[1].split(",") if len(sys.argv) > 1 else ["fp32_eager", "bf16_eager", "bf16_compile"]
    batches = [int(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [64, 256, 1024]
    for v in variants:
        for b in batches:
            print(json.dumps(run(v, b)), flush=True)
