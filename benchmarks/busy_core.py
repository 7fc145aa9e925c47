"""gpunet and PyTorch training on the CPU while another process keeps one core busy.

Each run is a fresh process that trains one model end to end on the embedded digits and
reports its training seconds (data loading and start-up excluded):

- gpunet: ``gpunet train --quiet --device cpu --model {mlp,cnn} --threads N`` (the seconds
  are the samples trained over its samples/s);
- PyTorch: the same model, optimizer (Adam, lr 1e-3), batch (64), epochs (30 MLP, 20 CNN)
  and per-epoch shuffling, in a hand-written loop with ``torch.set_num_threads(N)``.

``--busy`` starts a burner (``python -c 'while True: pass'``) for the whole measurement,
so one of the machine's cores is taken by other work, as on a shared 2-core runner. The
configurations alternate run by run, round by round; the table shows each one's median
and the min-max. ``--threads-list`` defaults to ``1 2``.

    python benchmarks/busy_core.py --busy --rounds 3 --json busy.json
    python benchmarks/busy_core.py --rounds 3 --json quiet.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SAMPLES = {"mlp": 30 * 1437, "cnn": 20 * 1437}

TORCH_CODE = r"""
import sys, time, numpy, torch
import gpunet
model_name, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
(X, y), _ = gpunet.datasets.load_digits()
X, y = torch.from_numpy(X), torch.from_numpy(y)
nn = torch.nn
if model_name == "mlp":
    model, epochs = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                  nn.Linear(128, 10)), 30
else:
    X = X.reshape(-1, 1, 8, 8)
    model, epochs = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10)), 20
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
rng = numpy.random.default_rng(0)
t0 = time.perf_counter()
for epoch in range(epochs):
    order = torch.from_numpy(rng.permutation(len(X)))
    for i in range(0, len(X), 64):
        idx = order[i:i + 64]
        loss = loss_fn(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
print(f"seconds {time.perf_counter() - t0:.4f}")
"""


def run_one(framework, model, threads):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if framework == "gpunet":
        cmd = [sys.executable, "-m", "gpunet.cli", "train", "--quiet", "--device", "cpu",
               "--model", model, "--threads", str(threads)]
    else:
        cmd = [sys.executable, "-c", TORCH_CODE, model, str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    if framework == "gpunet":
        line = [l for l in out.splitlines() if l.startswith("test accuracy")][-1]
        sps = float(line.split(" samples/s")[0].rsplit("| ", 1)[1].replace(",", ""))
        return SAMPLES[model] / sps
    return float(out.split("seconds ")[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--busy", action="store_true", help="keep one core busy with a burner process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--threads-list", nargs="+", type=int, default=[1, 2])
    p.add_argument("--frameworks", nargs="+", default=["gpunet", "torch"], choices=["gpunet", "torch"])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    configs = [(f, m, t) for m in a.models for f in a.frameworks for t in a.threads_list]
    times = {c: [] for c in configs}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    try:
        time.sleep(0.5 if burner else 0)
        for r in range(a.rounds):
            for c in configs:
                times[c].append(run_one(*c))
                print(f"round {r + 1} {c[0]:6} {c[1]} threads={c[2]}: {times[c][-1]:.2f} s", file=sys.stderr)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    print(f"{'busy' if a.busy else 'no burner'}; load average {os.getloadavg()[0]:.2f}; "
          f"{a.rounds} rounds; training seconds, median (min-max)")
    for c in configs:
        ts = times[c]
        print(f"  {c[0]:6} {c[1]} {c[2]} thread(s): {statistics.median(ts):7.2f}  ({min(ts):.2f}-{max(ts):.2f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"busy": a.busy, "rounds": a.rounds,
                       "runs": [{"framework": c[0], "model": c[1], "threads": c[2], "seconds": times[c]}
                                for c in configs]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
