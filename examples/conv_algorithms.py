"""Time fit's training step of a zoo model with its 3x3 convolutions on im2col, then on Winograd.

    python examples/conv_algorithms.py --model vgg
    MINICNN_WORKERS=1 OPENBLAS_NUM_THREADS=1 python examples/conv_algorithms.py --model vgg

Every 3x3 stride-1 Conv2D with at least ``--min-channels`` input channels and an even output
height and width (an odd one leaves half of the last row of 2x2 blocks empty) switches between
``algorithm="im2col"`` and ``"winograd"``; the two alternate in blocks of ``--steps`` timed steps
on the same model and batch (after one untimed step and a pause each), so that a noisy machine
slows both alike. Prints the median step of each and their ratio.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
import minicnn
from minicnn import zoo
from minicnn.kernels import allocator
from minicnn.layers import Conv2D
from minicnn.tools.bench import runners, timing


def output_sizes(model, x) -> dict:
    """{id(layer): output (H, W)} of every 4-D output, from one forward of one image."""
    layers, reads = timing.graph_nodes(model)
    values: list = []
    with minicnn.no_grad():
        for layer, read in zip(layers, reads):
            values.append(layer.forward(*[x[:1] if j < 0 else values[j] for j in read]))
    return {id(layer): tuple(v.shape[2:]) for layer, v in zip(layers, values) if v.ndim == 4}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ref-cnn", choices=tuple(zoo.MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per algorithm")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--min-channels", type=int, default=32)
    parser.add_argument("--pause", type=float, default=0.2)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()                  # as the minicnn command does
    model = runners.bench_model(args.model)
    x, y = runners.make_batch(args.batch_size, 0, images=runners.image_to_image(model))
    runner = runners.MinicnnRunner(model, x, y)
    sizes = output_sizes(model, x)
    convs = [layer for _, layer in model.named_layers() if isinstance(layer, Conv2D)
             and layer.winograd_applies and layer.in_channels >= args.min_channels
             and all(v % 2 == 0 for v in sizes.get(id(layer), (1,)))]
    times: dict[str, list[float]] = {"im2col": [], "winograd": []}
    for _ in range(args.blocks):
        for algorithm, block in times.items():
            for conv in convs:
                conv.algorithm = algorithm
            time.sleep(args.pause)
            runner.train_step()
            for _ in range(args.steps):
                start = time.perf_counter()
                runner.train_step()
                block.append(time.perf_counter() - start)
    im2col, winograd = (statistics.median(t) for t in times.values())
    print(f"{args.model}: {len(convs)} of its convolutions switched; fit step im2col "
          f"{im2col * 1e3:.1f} ms, winograd {winograd * 1e3:.1f} ms (median of "
          f"{len(times['im2col'])} each): winograd / im2col = {winograd / im2col:.3f}")


if __name__ == "__main__":
    main()
