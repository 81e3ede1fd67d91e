"""Training: losses, optimizers, the loop (``fit``, ``train_step``), evaluation, the split of a
batch among CPU threads and data-parallel training over processes."""
