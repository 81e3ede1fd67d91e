"""Train the reference CNN on MNIST with minicnn's library API, top to bottom.

    python examples/train_mnist.py                        # 3 epochs on all 60,000 images
    python examples/train_mnist.py --limit 2000 --epochs 1    # a quick smoke test

MNIST is read from $MINICNN_DATA/mnist/ (or downloaded). With the full recipe the test
accuracy ends near 99%. The saved model.npz works with the command line too:
``minicnn evaluate model.npz`` and ``minicnn predict model.npz 0 1 2``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
import minicnn
from minicnn.data import DataLoader, Normalize, RandomShift
from minicnn.data.datasets import load_mnist
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.training import SGD, CosineLR

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
parser.add_argument("--out", default="model.npz", help="where to save the model")
args = parser.parse_args()

# 1. Data: uint8 images (N, 28, 28) and int64 labels, batched as float32 (128, 1, 28, 28).
minicnn.manual_seed(0)
(x_train, y_train), (x_test, y_test) = load_mnist()
x_train, y_train = x_train[:args.limit], y_train[:args.limit]
normalize = Normalize(mean=0.1307, std=0.3081)          # pixels / 255, then zero mean, unit std
train_loader = DataLoader(x_train, y_train, batch_size=128, shuffle=True, seed=0,
                          transform=normalize, augment=RandomShift(1))  # shifts of <= 1 pixel

# 2. The model: two conv + ReLU + max-pool stages, then two dense layers.
model = minicnn.Sequential([
    Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2),      # -> (32, 14, 14)
    Conv2D(32, 64, 3, padding=1), ReLU(), MaxPool2D(2),     # -> (64, 7, 7)
    Flatten(),                                              # -> (3136,)
    Dense(3136, 128, activation="relu"),
    Dense(128, 10),                                         # one score per digit
], input_shape=(1, 28, 28))
model.summary()

# 3. SGD with momentum and weight decay; the learning rate follows a cosine over all steps.
optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
schedule = CosineLR(0.05, total_steps=args.epochs * len(train_loader))

# 4. Train (softmax cross-entropy is the default loss), checking the test set every epoch.
history = model.fit(train_loader, epochs=args.epochs, optimizer=optimizer, schedule=schedule,
                    val_data=(x_test, y_test))

# 5. Evaluate and save: the file holds the architecture too, so minicnn.load rebuilds it.
loss, accuracy = model.evaluate((x_test, y_test), transform=normalize)
print(f"test accuracy {100 * accuracy:.2f}% (loss {loss:.4f})")
minicnn.save(model, args.out, dataset="mnist", transform=normalize.config())
print(f"saved {args.out}; reload it with minicnn.load({args.out!r})")
