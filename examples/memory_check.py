"""Resident memory of a batch-128 training run of the reference CNN on MNIST, per epoch and at
its peak, optionally side by side with the same run in PyTorch.

    python examples/memory_check.py                         # minicnn: 5 epochs, 60,000 images
    python examples/memory_check.py --limit 10000           # a quicker check
    python examples/memory_check.py --compare torch         # the same run in PyTorch, and a table

The run is the reference recipe (``minicnn.training.REFERENCE_RECIPE``):
``minicnn.training.fit`` with SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine decay per
step, batch 128, inputs normalised with mean 0.1307 and std 0.3081 (and the recipe's random
shifts, if it has them), evaluated on the 10,000 test images after every epoch. PyTorch trains
the same model with the same settings the way a typical user script does: the whole set as one
normalised float32 tensor, a plain loop over shuffled index batches, evaluation under
``torch.no_grad()``.

Each framework runs in its own child process that imports only what it needs, so the peaks do
not mix. Figures are MiB read from the child's ``/proc/self/status``: ``VmRSS`` (resident set)
after each epoch, its evaluation included, and ``VmHWM``, the process's peak resident set
(``ru_maxrss`` is not used: it is inherited across exec, so a child could report its parent's
peak). "growth" is the resident set after the last epoch minus that after epoch 2. Linux only.
MNIST is read from ``--data-root`` or ``$MINICNN_DATA``/mnist/.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MARK = "MEMORY_CHECK_RESULT "          # the child's last stdout line: MARK + JSON


def status_mib() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024      # kB
    return found


class Report:
    """What a child measures: the resident set once ready to train, then after every epoch."""

    def __init__(self, framework: str):
        self.data = {"framework": framework, "epochs": []}
        self.started = time.perf_counter()

    def ready(self, **info) -> None:
        self.data.update(ready_rss=status_mib()["VmRSS"], **info)
        self.started = time.perf_counter()

    def epoch(self, epoch: int, val_acc: float | None) -> None:
        m = status_mib()
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.data["epochs"].append({"epoch": epoch, "rss": m["VmRSS"], "hwm": m["VmHWM"],
                                    "seconds": seconds, "val_acc": val_acc})
        acc = "" if val_acc is None else f", test acc {100 * val_acc:.2f}%"
        print(f"[{self.data['framework']}] epoch {epoch}: RSS {m['VmRSS']:.1f} MiB, peak "
              f"{m['VmHWM']:.1f} MiB ({seconds:.0f} s{acc})", file=sys.stderr, flush=True)

    def finish(self) -> None:
        self.data["peak"] = status_mib()["VmHWM"]
        print(MARK + json.dumps(self.data), flush=True)


# --------------------------------------------------------------------------- minicnn child

def run_minicnn(args: argparse.Namespace) -> None:
    sys.path.insert(0, ROOT)                   # run from a checkout without installing
    import minicnn
    from minicnn import training, zoo
    from minicnn.data import DataLoader, Normalize, RandomShift
    from minicnn.data.datasets import load_mnist
    from minicnn.training.evaluation import EVAL_BATCH_SIZE
    from minicnn.training.loop import fit

    report = Report("minicnn")
    recipe = training.REFERENCE_RECIPE
    augment = getattr(recipe, "augment", 0) if args.augment is None else args.augment
    eval_batch = args.eval_batch_size or EVAL_BATCH_SIZE
    (x, y), (xt, yt) = load_mnist(args.data_root)
    x, y = x[:args.limit], y[:args.limit]
    minicnn.manual_seed(args.seed)
    model = zoo.build_model("ref-cnn")
    optimizer = training.make_optimizer(model, recipe.optimizer, recipe.lr, recipe.momentum,
                                        recipe.weight_decay)
    loader = DataLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                        transform=Normalize(recipe.mean, recipe.std),
                        augment=RandomShift(augment) if augment else None)
    schedule = training.make_schedule(recipe.schedule, recipe.lr, args.epochs * len(loader))
    report.ready(images=len(x), test_images=len(xt), augment=augment, eval_batch=eval_batch,
                 recipe=recipe.as_dict())

    def on_epoch_end(record: dict) -> None:
        report.epoch(record["epoch"], record.get("val_acc"))

    fit(model, loader, args.epochs, optimizer, val_data=None if args.no_eval else (xt, yt),
        schedule=schedule, callbacks=[on_epoch_end], progress=False, eval_batch_size=eval_batch)
    report.finish()


# --------------------------------------------------------------------------- PyTorch child

def read_idx(folder: str, stem: str):
    """An IDX file (gzipped or not) of MNIST as a uint8 NumPy array."""
    import numpy
    path = os.path.join(folder, stem)
    if os.path.isfile(path + ".gz"):
        with gzip.open(path + ".gz") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return numpy.frombuffer(raw, numpy.uint8, offset=4 + 4 * ndim).reshape(shape)


def run_torch(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    report = Report("PyTorch")
    r = json.loads(args.recipe)                # the minicnn child's recipe, so both run alike
    torch.manual_seed(args.seed)
    folder = os.path.join(args.data_root or os.environ.get("MINICNN_DATA") or
                          os.path.join(ROOT, "datasets"), "mnist")

    def tensors(images: str, labels: str, limit: int | None):
        x = torch.tensor(read_idx(folder, images)[:limit], dtype=torch.float32)
        x = x.div_(255).sub_(r["mean"]).div_(r["std"]).unsqueeze(1)        # (N, 1, 28, 28)
        return x, torch.tensor(read_idx(folder, labels)[:limit], dtype=torch.int64)

    x, y = tensors("train-images-idx3-ubyte", "train-labels-idx1-ubyte", args.limit)
    xt, yt = tensors("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", None)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=r["lr"], momentum=r["momentum"],
                                weight_decay=r["weight_decay"])
    bs, n = args.batch_size, len(x)
    steps = args.epochs * -(-n // bs)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    k, fill = args.augment_k, -r["mean"] / r["std"]        # a shifted-in pixel is black

    def shift(xb):
        """Move each image by a random (dy, dx) in [-k, k]^2, as minicnn's RandomShift."""
        m, _, h, w = xb.shape
        s = torch.randint(-k, k + 1, (m, 2))
        padded = F.pad(xb, (k, k, k, k), value=fill)
        rows = torch.arange(h)[None, :] + (k - s[:, 0:1])
        cols = torch.arange(w)[None, :] + (k - s[:, 1:2])
        out = padded[torch.arange(m)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    report.ready(images=n, test_images=len(xt), augment=k, eval_batch=args.eval_batch_size,
                 threads=torch.get_num_threads(), version=torch.__version__)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, bs):
            index = order[start:start + bs]
            xb, yb = x[index], y[index]
            if k:
                xb = shift(xb)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            schedule.step()
        val_acc = None
        if not args.no_eval:
            model.eval()
            correct = 0
            with torch.no_grad():
                for start in range(0, len(xt), args.eval_batch_size):
                    out = model(xt[start:start + args.eval_batch_size])
                    correct += int((out.argmax(1) == yt[start:start + args.eval_batch_size]).sum())
            val_acc = correct / len(xt)
        report.epoch(epoch, val_acc)
    report.finish()


# --------------------------------------------------------------------------- the parent

def child(framework: str, args: argparse.Namespace, extra: list[str]) -> dict:
    """Run one framework in a fresh interpreter and return its report."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", framework,
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--seed", str(args.seed)] + extra
    for flag, value in (("--limit", args.limit), ("--data-root", args.data_root)):
        if value is not None:
            argv += [flag, str(value)]
    if args.no_eval:
        argv.append("--no-eval")
    print(f"running {framework} ...", file=sys.stderr, flush=True)
    result = subprocess.run(argv, stdout=subprocess.PIPE, text=True)   # stderr passes through
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(MARK)]
    if result.returncode or not lines:
        sys.exit(f"memory_check: the {framework} run failed (exit status {result.returncode})")
    return json.loads(lines[-1][len(MARK):])


def table(reports: list[dict]) -> str:
    names = [r["framework"] for r in reports]
    width = max(10, *(len(n) + 2 for n in names))
    rows = [("MiB", names)]
    rows.append(("ready to train (RSS)", [f"{r['ready_rss']:.1f}" for r in reports]))
    epochs = max(len(r["epochs"]) for r in reports)
    for e in range(epochs):
        rows.append((f"after epoch {e + 1} (RSS)",
                     [f"{r['epochs'][e]['rss']:.1f}" if e < len(r["epochs"]) else "-"
                      for r in reports]))
    rows.append(("peak (VmHWM)", [f"{r['peak']:.1f}" for r in reports]))
    if epochs >= 3:
        rows.append((f"growth epoch 2 -> {epochs}",
                     [f"{r['epochs'][-1]['rss'] - r['epochs'][1]['rss']:+.1f}" for r in reports]))
    rows.append(("seconds per epoch (mean)",
                 [f"{sum(e['seconds'] for e in r['epochs']) / len(r['epochs']):.0f}"
                  for r in reports]))
    if all(r["epochs"][-1]["val_acc"] is not None for r in reports):
        rows.append(("final test accuracy %",
                     [f"{100 * r['epochs'][-1]['val_acc']:.2f}" for r in reports]))
    label = max(len(r[0]) for r in rows) + 2
    lines = [f"{name:<{label}}" + "".join(f"{v:>{width}}" for v in values)
             for name, values in rows]
    if len(reports) == 2:
        lines.append(f"peak ratio {names[0]}/{names[1]}: "
                     f"{reports[0]['peak'] / reports[1]['peak']:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N images (default: all 60,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", choices=["torch"], help="also run the same in PyTorch")
    parser.add_argument("--augment", type=int, default=None, metavar="K",
                        help="random shifts of up to K pixels (default: the recipe's)")
    parser.add_argument("--eval-batch-size", type=int, default=None,
                        help="test-set batch, both frameworks (default: minicnn's, 256)")
    parser.add_argument("--no-eval", action="store_true", help="skip the per-epoch test")
    parser.add_argument("--data-root", metavar="DIR", help="folder holding mnist/ "
                        "(default: $MINICNN_DATA)")
    parser.add_argument("--child", choices=["minicnn", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--augment-k", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1 or args.epochs < 1:
        parser.error("--limit and --epochs must be positive")
    if not os.path.exists("/proc/self/status"):
        sys.exit("memory_check: needs Linux (/proc/self/status)")
    if args.child == "minicnn":
        run_minicnn(args)
        return 0
    if args.child == "torch":
        run_torch(args)
        return 0

    extra = [] if args.augment is None else ["--augment", str(args.augment)]
    if args.eval_batch_size:
        extra += ["--eval-batch-size", str(args.eval_batch_size)]
    reports = [child("minicnn", args, extra)]
    if args.compare == "torch":
        if importlib.util.find_spec("torch") is None:
            print("PyTorch is not installed: showing minicnn alone", file=sys.stderr)
        else:
            m = reports[0]
            reports.append(child("torch", args, [
                "--recipe", json.dumps(m["recipe"]), "--augment-k", str(m["augment"]),
                "--eval-batch-size", str(m["eval_batch"])]))
    m = reports[0]
    print(f"\nreference CNN, batch {args.batch_size}, {m['images']} training images, "
          f"{args.epochs} epochs, random shifts {m['augment']}, "
          + ("no test-set evaluation" if args.no_eval else
             f"{m['test_images']} test images evaluated in batches of {m['eval_batch']}"))
    if len(reports) == 2:
        print(f"PyTorch {reports[1]['version']}, {reports[1]['threads']} threads")
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
