"""CNN training-step throughput on the CPU: gpunet (NumPy) against PyTorch (CPU).

    python benchmarks/bench_cnn_cpu.py [--quick] [--rounds R] [--steps S] [--threads T] [--json PATH]

Each measurement runs ``benchmarks/cnn_step.py`` in a fresh process (one framework per
process, both on ``T`` = 2 threads by default: ``torch.set_num_threads(T)``,
``OMP_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` = T), which times ``S`` steps after a
warm-up and reports their median. Rounds alternate the order of the frameworks (gpunet first in even rounds, torch
first in odd ones), so a slow spell on a shared machine hits both. The table gives, per
case, the median over rounds of each framework's per-process median step time and the
ratio ``torch_time / gpunet_time`` (gpunet's throughput relative to PyTorch's; > 1 means
gpunet is faster).

The machine should be otherwise idle: on a shared 2-core machine both frameworks' thread
pools stall when other processes take the cores (PyTorch's most of all). The load average
before and after the runs is printed and saved; a ratio measured under load says little.
With ``--threads 1`` the table also compares CPU time per step (process time, which a
busy machine inflates far less than wall time): a steadier proxy for throughput when the
machine cannot be had to oneself.

A step is forward, softmax cross-entropy, backward and an SGD update; the two cases
(documented in ``cnn_step.py``):

* ``1d``: (100, 1, 1, 40) inputs; 3 × Conv2D kernel (1, 5), stride (1, 2), padding (0, 2),
  25 channels, ReLU (lengths 40 → 20 → 10 → 5); Dense(125, 10). Goal: ratio ≥ 1.0.
* ``2d``: (64, 1, 28, 28) inputs; Conv2D(1, 16, 3, p=1)+ReLU, MaxPool2D(2),
  Conv2D(16, 32, 3, p=1)+ReLU, MaxPool2D(2), Flatten, Dense(1568, 10). Goal: ratio ≥ 0.8.

Three more cases run with ``--cases``, no goal: ``2d-bn`` (batch norm between convolution
and ReLU, as separate layers), ``2d-avg`` (the same with average pooling) and ``2d-gelu``
(the same with the exact GELU); ``--cases all`` runs all five.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GOALS = {"1d": 1.0, "2d": 0.8}


def run_one(framework, case, steps, warmup, threads):
    """``(median wall s, median CPU s)`` per step of one fresh process."""
    t = str(threads)
    env = dict(os.environ, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
    out = subprocess.run([sys.executable, os.path.join(HERE, "cnn_step.py"), "--framework", framework,
                          "--case", case, "--steps", str(steps), "--warmup", str(warmup), "--threads", t],
                         check=True, capture_output=True, text=True, env=env)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["median_s"], d["cpu_median_s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 20 steps (default: 7 rounds of 100)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cases", default="1d,2d")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    rounds = a.rounds or (3 if a.quick else 7)
    steps = a.steps or (20 if a.quick else 100)
    warmup = 5 if a.quick else 10
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    if cases == ["all"]:
        cases = ["1d", "2d", "2d-bn", "2d-avg", "2d-gelu"]
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: 1-minute load average is {load_before[0]:.2f}; other processes are using "
              "the CPU and the timings will be noisy", file=sys.stderr)
    times = {(c, f): [] for c in cases for f in ("gpunet", "torch")}
    cpu = {(c, f): [] for c in cases for f in ("gpunet", "torch")}
    for r in range(rounds):
        order = ("gpunet", "torch") if r % 2 == 0 else ("torch", "gpunet")
        for c in cases:
            for f in order:
                wall, cpu_s = run_one(f, c, steps, warmup, a.threads)
                times[(c, f)].append(wall)
                cpu[(c, f)].append(cpu_s)
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    load_after = os.getloadavg()
    rows = []
    for c in cases:
        g = statistics.median(times[(c, "gpunet")])
        t = statistics.median(times[(c, "torch")])
        gc_, tc_ = statistics.median(cpu[(c, "gpunet")]), statistics.median(cpu[(c, "torch")])
        rows.append({"case": c, "gpunet_ms": g * 1e3, "torch_ms": t * 1e3, "ratio": t / g, "goal": GOALS.get(c),
                     "gpunet_cpu_ms": gc_ * 1e3, "torch_cpu_ms": tc_ * 1e3, "cpu_ratio": tc_ / gc_,
                     "gpunet_runs_ms": [v * 1e3 for v in times[(c, "gpunet")]],
                     "torch_runs_ms": [v * 1e3 for v in times[(c, "torch")]]})
    import numpy
    from gpunet.backend import cpu_model
    import torch
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); numpy {numpy.__version__}, "
          f"torch {torch.__version__}; {rounds} rounds x {steps} steps, {a.threads} thread(s) each; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    one = a.threads == 1
    head = f"{'case':<8}{'gpunet ms/step':>16}{'torch ms/step':>15}{'ratio':>8}{'goal':>7}"
    print(head + (f"{'gpunet cpu ms':>15}{'torch cpu ms':>14}{'cpu ratio':>11}" if one else ""))
    for row in rows:
        goal = "-" if row["goal"] is None else f"{row['goal']:.1f}"
        line = (f"{row['case']:<8}{row['gpunet_ms']:>16.3f}{row['torch_ms']:>15.3f}{row['ratio']:>8.2f}"
                f"{goal:>7}")
        if one:
            line += f"{row['gpunet_cpu_ms']:>15.3f}{row['torch_cpu_ms']:>14.3f}{row['cpu_ratio']:>11.2f}"
        print(line)
    print("ratio = torch step time / gpunet step time (gpunet throughput relative to PyTorch); "
          "medians over rounds of per-process median step times")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu_model(), "cores": os.cpu_count(), "numpy": numpy.__version__,
                       "torch": torch.__version__, "threads": a.threads, "load_before": load_before, "load_after": load_after, "rounds": rounds, "steps": steps, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
