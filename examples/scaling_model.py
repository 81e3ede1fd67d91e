"""How data-parallel training should scale: step time and efficiency on paper.

A data-parallel step is compute (forward + backward of each rank's share of the batch) plus
one ring all-reduce of the gradients, which on N ranks costs

    t_allreduce = 2 (N - 1) / N * bytes / bandwidth  +  2 (N - 1) * latency

(each rank sends and receives 2 (N - 1) / N of the buffer, in 2 (N - 1) messages). With the
global batch fixed (``minicnn train --batch-size 128`` on N ranks: strong scaling) the compute
per rank is t_compute / N; with the batch per rank fixed (weak scaling) it stays t_compute.
Efficiency is the ideal step time over the modelled one. Overlapping the all-reduce with
backward (sending a layer's gradients while earlier layers still run backward) can hide up to
the backward time (about 2/3 of compute); it pays once the all-reduce is a noticeable share
of the step (here: 10%).

    python examples/scaling_model.py                      # the README's table
    python examples/scaling_model.py --step-ms 150 --wide-step-ms 900 --latency-us 2

The compute times default to measurements of one batch-128 step on one core of this project's
2-core machine (NumPy, OpenBLAS; see README "Training on several cores, GPUs or machines").
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import minicnn
from minicnn import zoo

BATCH = 128
RANKS = (2, 4, 8, 16, 32, 64)
LINKS_GBIT = (10, 100)
STEP_MS = 140.0          # ref-cnn, batch 128, one core (measured: median of 3, see the README)
WIDE_STEP_MS = 800.0     # ref-cnn with width_mult=4, batch 128, one core (measured: 760-860)
BACKWARD_SHARE = 2 / 3   # of a step's compute: what overlapping could hide at most
OVERLAP_PAYS = 0.10      # all-reduce share of the step from which overlapping is worth it


@dataclass
class Case:
    """A model to scale: its name, gradient bytes and one-core compute time per batch."""

    name: str
    params: int
    step_s: float

    @property
    def grad_bytes(self) -> int:
        return 4 * self.params               # float32 gradients


def allreduce_seconds(nbytes: float, ranks: int, gbit_per_s: float, latency_s: float) -> float:
    """Ring all-reduce time of ``nbytes`` over ``ranks`` ranks on links of ``gbit_per_s``."""
    if ranks < 2:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / (gbit_per_s * 1e9 / 8) + \
        2 * (ranks - 1) * latency_s


def step_seconds(case: Case, ranks: int, gbit_per_s: float, latency_s: float,
                 weak: bool = False) -> tuple[float, float]:
    """(step time, all-reduce time) on ``ranks`` ranks, without overlap."""
    compute = case.step_s if weak else case.step_s / ranks
    comm = allreduce_seconds(case.grad_bytes, ranks, gbit_per_s, latency_s)
    return compute + comm, comm


def efficiency(case: Case, ranks: int, gbit_per_s: float, latency_s: float,
               weak: bool = False) -> float:
    """Ideal step time over the modelled one (1.0: perfect scaling)."""
    step, _ = step_seconds(case, ranks, gbit_per_s, latency_s, weak)
    ideal = case.step_s if weak else case.step_s / ranks
    return ideal / step


def overlap_from(case: Case, gbit_per_s: float, latency_s: float, weak: bool = False,
                 ranks: tuple[int, ...] = RANKS) -> int | None:
    """The fewest ranks at which the all-reduce takes OVERLAP_PAYS of the step or more."""
    for n in ranks:
        step, comm = step_seconds(case, n, gbit_per_s, latency_s, weak)
        if comm >= OVERLAP_PAYS * step:
            return n
    return None


def overlap_bytes(compute_s: float, ranks: int, gbit_per_s: float, latency_s: float) -> float:
    """Gradient bytes from which the all-reduce takes OVERLAP_PAYS of a step whose compute
    is ``compute_s`` (solving comm = share / (1 - share) * compute)."""
    target = OVERLAP_PAYS / (1 - OVERLAP_PAYS) * compute_s - 2 * (ranks - 1) * latency_s
    return max(0.0, target) * (gbit_per_s * 1e9 / 8) * ranks / (2 * (ranks - 1))


def count_params(width_mult: int) -> int:
    minicnn.manual_seed(0)
    return sum(p.size for p in zoo.build_model("ref-cnn", width_mult=width_mult).parameters())


def table(cases: list[Case], latency_s: float, weak: bool) -> str:
    """A markdown table: per rank count, step time and efficiency per model and link."""
    head = ["ranks"] + [f"{c.name}, {g} Gbit/s" for c in cases for g in LINKS_GBIT]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for n in RANKS:
        cells = [str(n)]
        for c in cases:
            for g in LINKS_GBIT:
                step, comm = step_seconds(c, n, g, latency_s, weak)
                cells.append(f"{1e3 * step:.1f} ms ({1e3 * comm:.2f} comm), "
                             f"{100 * efficiency(c, n, g, latency_s, weak):.0f}%")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, default=STEP_MS,
                        help="ref-cnn compute per batch-128 step on one core (ms)")
    parser.add_argument("--wide-step-ms", type=float, default=WIDE_STEP_MS,
                        help="the 4x wider ref-cnn's compute per step on one core (ms)")
    parser.add_argument("--latency-us", type=float, default=5.0, help="per message (µs)")
    args = parser.parse_args(argv)
    latency = args.latency_us * 1e-6
    cases = [Case("ref-cnn", count_params(1), args.step_ms / 1e3),
             Case("4x wide", count_params(4), args.wide_step_ms / 1e3)]
    for c in cases:
        print(f"{c.name}: {c.params:,} parameters, {c.grad_bytes / 1e6:.2f} MB of float32 "
              f"gradients, {1e3 * c.step_s:.0f} ms per batch-{BATCH} step on one core")
    for weak, title in ((False, f"global batch {BATCH} split among the ranks (strong scaling, "
                                "as minicnn train)"),
                        (True, f"batch {BATCH} per rank (weak scaling)")):
        print(f"\n{title}: step time (all-reduce), efficiency\n")
        print(table(cases, latency, weak))
        for c in cases:
            for g in LINKS_GBIT:
                n = overlap_from(c, g, latency, weak)
                print(f"- {c.name}, {g} Gbit/s: all-reduce >= {100 * OVERLAP_PAYS:.0f}% of the "
                      f"step from {n} ranks" if n else
                      f"- {c.name}, {g} Gbit/s: all-reduce < {100 * OVERLAP_PAYS:.0f}% of the "
                      f"step up to {RANKS[-1]} ranks")
    for g in LINKS_GBIT:
        size = overlap_bytes(cases[0].step_s, 64, g, latency)
        print(f"\nweak scaling, 64 ranks, {g} Gbit/s, {1e3 * cases[0].step_s:.0f} ms of compute: "
              f"overlap pays from {size / 1e6:.1f} MB of gradients "
              f"({size / 4 / 1e6:.2f} M float32 parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
