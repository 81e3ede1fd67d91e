"""Denoise MNIST digits with the zoo's convolutional autoencoder: a model that is not a
classifier, trained with per-pixel BCEWithLogits against the clean image, scored by PSNR,
and a picture.

    python examples/denoise_mnist.py                         # 3 epochs on 20,000 digits
    python examples/denoise_mnist.py --epochs 1 --limit 2000 # a quick smoke test
    python examples/denoise_mnist.py --decoder transpose     # ConvTranspose2D upsampling
    python examples/denoise_mnist.py --dataset fashion-mnist # clothes instead of digits

Each step adds N(0, 0.3^2) noise to a batch of clean digits (pixels in [0, 1], clipped), runs
the autoencoder on the noisy batch and takes the per-pixel binary cross-entropy of its logits
against the clean pixels.
It prints the test set's PSNR of the noisy input and of the model's output (higher is
better), and writes noisy / denoised / clean rows of eight test digits to ``--picture``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
import numpy as np

import minicnn
from minicnn.data.datasets import load_fashion_mnist, load_mnist
from minicnn.training import Adam
from minicnn.training.losses import BCEWithLogits
from minicnn.zoo.autoencoder import add_noise, autoencoder, denoise, psnr

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--limit", type=int, default=20000, help="train on the first N digits")
parser.add_argument("--test-limit", type=int, default=2000)
parser.add_argument("--noise", type=float, default=0.3, help="std of the added noise")
parser.add_argument("--decoder", choices=["upsample", "transpose"], default="upsample")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--picture", default="denoised.png", help="PNG of noisy/denoised/clean")
parser.add_argument("--out", default="autoencoder.npz", help="where to save the model")
args = parser.parse_args()

minicnn.manual_seed(0)
rng = np.random.default_rng(0)
(x_train, _), (x_test, _) = (load_mnist if args.dataset == "mnist" else load_fashion_mnist)()
clean = x_train[:args.limit, None].astype(np.float32) / 255          # (N, 1, 28, 28) in [0, 1]
test_clean = x_test[:args.test_limit, None].astype(np.float32) / 255
test_noisy = add_noise(test_clean, args.noise, np.random.default_rng(1))

model = autoencoder(decoder=args.decoder)
model.summary()
optimizer, loss = Adam(model.parameters(), lr=2e-3), BCEWithLogits()
for epoch in range(args.epochs):
    order, total = rng.permutation(len(clean)), 0.0
    for start in range(0, len(clean), args.batch_size):
        target = clean[order[start:start + args.batch_size]]
        optimizer.zero_grad()
        total += float(loss.forward(model.forward(add_noise(target, args.noise, rng),
                                                  training=True), target)) * len(target)
        model.backward(loss.backward())
        optimizer.step()
    denoised = denoise(model, test_noisy)
    print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(clean):.4f}, test PSNR "
          f"noisy {psnr(test_noisy, test_clean):.2f} dB -> denoised "
          f"{psnr(denoised, test_clean):.2f} dB")

minicnn.save(model, args.out, task="denoise", noise_std=args.noise)
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no picture (pip install matplotlib)")
else:
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
    rows = [("noisy", test_noisy), ("denoised", minicnn.backend.to_numpy(denoised)),
            ("clean", test_clean)]
    for r, (title, images) in enumerate(rows):
        for c in range(8):
            axes[r, c].imshow(images[c, 0], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title)
    fig.tight_layout()
    fig.savefig(args.picture, dpi=100)
    print(f"wrote {args.picture}")
