"""The plain-text report of ``minicnn bench``: header lines, the figures table (minicnn's
fit step, the hand-written loop and PyTorch, with ratios), and a per-layer table per backend."""
from __future__ import annotations

import math
from typing import Any

EPOCH_IMAGES = 60_000
"""Images in one MNIST training epoch (the per-epoch figures extrapolate to it)."""
REWARM_SECONDS = 0.1
"""Untimed calls that start each turn, at least one. After an idle pause the CPUs of a virtual
machine answer thread wake-ups slowly for a while (measured here: minicnn's batch-32 step took
10 ms instead of 6.3 ms for its first 50 ms after a 0.2 s pause; PyTorch's first step 17 ms
instead of 7), and a training run is never idle between steps."""
HAND_LOOP_KEY = "minicnn_hand_loop"
"""The results' key of the README's hand-written loop."""


def _fmt(v: float | None, kind: str) -> str:
    """A number for the report: kind 's' (seconds), 'rate', 'mib', 'ms', '%' or 'x' (ratio)."""
    if v is None:
        return "-"
    if kind == "s":
        return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"
    if kind == "rate":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return {"mib": f"{v:,.1f}", "ms": f"{v:.2f}", "%": f"{v:.1f}%", "x": f"{v:.2f}x"}[kind]


FIGURES = [("time per step (s, median)", "step_s_median", "s"),
           ("time per epoch (s, extrapolated)", "epoch_s", "s"),
           ("training images/s", "train_img_s", "rate"),
           ("inference images/s", "infer_img_s", "rate"),
           ("peak RSS, training (MiB)", "train_peak_rss_mib", "mib"),
           ("  increase after imports (MiB)", "train_rss_increase_mib", "mib"),
           ("peak RSS, inference (MiB)", "infer_peak_rss_mib", "mib"),
           ("  increase after imports (MiB)", "infer_rss_increase_mib", "mib"),
           ("GPU pool peak, training (MiB)", "train_gpu_pool_mib", "mib"),
           ("GPU pool peak, inference (MiB)", "infer_gpu_pool_mib", "mib")]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_header(report: dict[str, Any], sweep: bool = False) -> str:
    """The report's header lines: the model and what was timed, data, machine and versions
    (for ``sweep``, the batch sizes and the steps timed at each)."""
    cfg, mach = report["config"], report["machine"]
    versions = (f"numpy {mach['numpy']} ({mach['numpy_blas'] or 'BLAS unknown'}, "
                f"{mach.get('blas_kernels', 'unknown kernels')})")
    if "torch" in mach:
        versions += f", torch {mach['torch']} ({mach['torch_threads']} CPU threads)"
    if "gpu" in mach:
        versions += f", cupy {mach['cupy']} on {mach['gpu']}"
    channels = (f"conv channels {32 * cfg['width_mult']}/{64 * cfg['width_mult']}, "
                if cfg["model"] == "ref-cnn" else "")
    model = f"minicnn bench: {cfg['model']} ({channels}{cfg['params']:,} parameters)"
    if sweep:
        batches = ", ".join(map(str, report["sweep"]["batch_sizes"]))
        out = [f"{model}, sweep over batch sizes {batches}",
               f"training: fit's step, median of {cfg['steps']} steps after {cfg['warmup']} "
               "warm-up at each batch size, on a freshly built model"]
    else:
        out = [f"{model}, batch {cfg['batch_size']}",
               f"training: median of {cfg['steps']} steps after {cfg['warmup']} warm-up; epoch "
               f"= {EPOCH_IMAGES:,} images = {math.ceil(EPOCH_IMAGES / cfg['batch_size'])} steps",
               f"inference: eval mode, forward only, batch {cfg['infer_batch_size']}, median of "
               f"{cfg['infer_steps']} passes after 1 warm-up"]
    out += [f"data: {cfg['data']}, seed {cfg['seed']}",
            f"machine: {mach['cpu_model']}, {mach['cpu_count']} logical CPUs; Python "
            f"{mach['python']}, {versions}, minicnn {mach['minicnn']}"]
    if mach.get("blas_note"):
        out.append(mach["blas_note"])
    for b, res in (report.get("results") or {}).items():
        if res.get("roofline"):
            out.append(f"[{b}] {res['roofline']['line']}")
    return "\n".join(out)


def format_report(report: dict[str, Any]) -> str:
    """The plain-text report: header lines, the figures table (a backend that could not run
    is a column of n/a, its reason below), a per-layer table per backend."""
    cfg, results = report["config"], report["results"]
    unavailable = report.get("unavailable") or {}
    out = [format_header(report),
           "memory: peak resident set of a separate child process per framework (3 training "
           "steps / 2 inference passes); 'increase' = that peak minus the child's RSS once its "
           "imports are done"]
    hand = [b for b, res in results.items() if HAND_LOOP_KEY in res]
    torch_too = report.get("compare") == "torch"
    out += ["minicnn = fit's step (minicnn.training.train_step); hand loop = the README's loop on "
            "the same model (zero_grad; forward; loss; backward; step)",
            f"fit step, hand loop{' and PyTorch' * torch_too} alternate in blocks of 5 timed "
            f"steps in one process, each block after {cfg['pause_s']} s idle and {REWARM_SECONDS}"
            " s of untimed steps" + "; PyTorch runs the same model from the same initial "
            "weights, SGD and loss" * torch_too] if hand else []
    for res in results.values():
        if res.get("torch", {}).get("cuda_settings"):
            out.append("PyTorch on CUDA: " + ", ".join(
                f"{k.removeprefix('torch.backends.')} = {v}"
                for k, v in res["torch"]["cuda_settings"].items()))
    if "cupy" in results:
        out.append(f"CuPy: CUPY_TF32 = {cfg.get('cupy_tf32', 'unset')}")
    header = ["figure"]
    columns: list[tuple[dict[str, Any], str | None]] = []
    for b in cfg.get("backends", results):
        if b in unavailable:
            header.append(f"minicnn {b}")
            columns.append(({}, "n/a"))
            continue
        res = results[b]
        header.append(f"minicnn {b}")
        columns.append((res["minicnn"], None))
        if b in hand:
            header.append(f"hand loop {b}")
            columns.append((res[HAND_LOOP_KEY], None))
        if "torch" in res:
            header += [f"PyTorch {res['torch']['device']}", "minicnn/PyTorch"]
            columns += [(res["torch"], None), (res["ratio"]["fit step"], "x")]
            if b in hand:
                header.append("hand loop/PyTorch")
                columns.append((res["ratio"]["hand loop"], "x"))
    if report.get("speedup"):
        header.append("minicnn cupy speedup")
        columns.append((report["speedup"]["minicnn"], "x"))
    rows = [[label] + ["n/a" if fixed == "n/a" else _fmt(col.get(key), fixed or kind)
                       for col, fixed in columns]
            for label, key, kind in FIGURES if any(col.get(key) is not None for col, _ in columns)]
    out += ["", table(header, rows)]
    out += [f"minicnn {b}: not measured (n/a): {reason}" for b, reason in unavailable.items()]
    out += [f"minicnn {b}: hand loop / fit step = "
            f"{_fmt(results[b]['hand_loop_vs_fit_step']['step_s_median'], 'x')} per step (median)"
            for b in hand]
    for b, res in results.items():
        step_ms = 1000 * res["minicnn"]["step_s_median"]
        rows = [[f"{r['name']} ({r['type']})", _fmt(r["forward_ms"], "ms"),
                 _fmt(r["backward_ms"], "ms"), _fmt(r["total_ms"], "ms"),
                 _fmt(100 * r["total_ms"] / step_ms, "%")] for r in res["layers"]]
        total = sum(r["total_ms"] for r in res["layers"])
        rows.append(["sum of the above", "", "", _fmt(total, "ms"),
                     _fmt(100 * total / step_ms, "%")])
        split = res["minicnn"].get("workers", 1)
        share = (f"one of {split} replicas on its 1/{split} of the batch, one core (each core "
                 "does this in parallel)" if split > 1 else "the whole batch")
        out += ["", f"minicnn {b}, per layer (median ms; % of the {step_ms:.4g} ms median step; "
                f"{share}; each layer timed alone, so the sum may differ from the step):",
                table(["layer", "forward ms", "backward ms", "total ms", "share"], rows)]
    return "\n".join(out)


# --- command line -------------------------------------------------------------------------------
