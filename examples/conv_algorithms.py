"""Time fit's training step of a zoo model with its convolutions on im2col, then on Winograd.

    python examples/conv_algorithms.py --model vgg
    MINICNN_WORKERS=1 OPENBLAS_NUM_THREADS=1 python examples/conv_algorithms.py --model vgg

Every Conv2D switches between ``algorithm="im2col"`` and ``"auto"`` (Winograd F(2x2, 3x3) for
the 3x3 stride-1 ones with at least ``conv.WINOGRAD_MIN_CHANNELS`` input channels and an even
output size); the two alternate in blocks of ``--steps`` timed steps on the same model and batch
(after one untimed step and a pause each), so that a noisy machine slows both alike. Prints how
many convolutions qualify, the median step of each and their ratio.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
from minicnn import zoo
from minicnn.kernels import allocator
from minicnn.layers import Conv2D, conv
from minicnn.tools.bench import runners


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ref-cnn", choices=tuple(zoo.MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per algorithm")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--pause", type=float, default=0.2)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()                  # as the minicnn command does
    model = runners.bench_model(args.model)
    x, y = runners.make_batch(args.batch_size, 0, images=runners.image_to_image(model))
    runner = runners.MinicnnRunner(model, x, y)
    convs = [layer for _, layer in model.named_layers() if isinstance(layer, Conv2D)]
    times: dict[str, list[float]] = {"im2col": [], "auto": []}
    for _ in range(args.blocks):
        for algorithm, block in times.items():
            for layer in convs:
                layer.algorithm = algorithm
            time.sleep(args.pause)
            runner.train_step()
            for _ in range(args.steps):
                start = time.perf_counter()
                runner.train_step()
                block.append(time.perf_counter() - start)
    eligible = sum(c.winograd_applies and c.in_channels >= conv.WINOGRAD_MIN_CHANNELS
                   for c in convs)
    im2col, auto = (statistics.median(t) for t in times.values())
    print(f"{args.model}: {eligible} of {len(convs)} convolutions 3x3 stride 1 with >= "
          f"{conv.WINOGRAD_MIN_CHANNELS} input channels (Winograd under auto at even sizes); "
          f"fit step im2col {im2col * 1e3:.1f} ms, auto {auto * 1e3:.1f} ms (median of "
          f"{len(times['im2col'])} each): auto / im2col = {auto / im2col:.3f}")


if __name__ == "__main__":
    main()
