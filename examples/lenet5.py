"""LeNet-5 on MNIST (or Fashion-MNIST): a second model, built from the model zoo.

    python examples/lenet5.py                              # 3 epochs on MNIST
    python examples/lenet5.py --dataset fashion-mnist --augment 2
    python examples/lenet5.py --limit 2000 --epochs 1      # a quick smoke test

LeNet-5 (LeCun et al., 1998) in its modern form: 5x5 convolutions with 6 and 16 channels,
ReLU and max-pooling, then dense layers 400 -> 120 -> 84 -> 10; about 62k parameters, a
seventh of the reference CNN.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
import minicnn
from minicnn import training, zoo
from minicnn.data import DataLoader, Normalize, RandomShift
from minicnn.data.datasets import load_fashion_mnist, load_mnist
from minicnn.training import SGD, CosineLR

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
parser.add_argument("--augment", type=int, default=0, help="random shifts of up to K pixels")
parser.add_argument("--out", default="lenet5.npz", help="where to save the model")
args = parser.parse_args()

minicnn.manual_seed(0)
load = load_mnist if args.dataset == "mnist" else load_fashion_mnist
(x_train, y_train), (x_test, y_test) = load()
x_train, y_train = x_train[:args.limit], y_train[:args.limit]
recipe = training.REFERENCE_RECIPE
normalize = Normalize(recipe.mean, recipe.std)
train_loader = DataLoader(x_train, y_train, batch_size=recipe.batch_size, seed=0,
                          transform=normalize,
                          augment=RandomShift(args.augment) if args.augment else None)

model = zoo.build_model("lenet5")
model.summary()
optimizer = SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                weight_decay=recipe.weight_decay)
schedule = CosineLR(recipe.lr, total_steps=args.epochs * len(train_loader))
history = model.fit(train_loader, epochs=args.epochs, optimizer=optimizer, schedule=schedule,
                    val_data=(x_test, y_test))

best = max(history, key=lambda record: record["val_acc"])
print(f"best test accuracy {100 * best['val_acc']:.2f}% after epoch {best['epoch']}")
minicnn.save(model, args.out, dataset=args.dataset, transform=normalize.config())
print(f"saved {args.out}")
