"""Mixed precision: compute in float16 (or bfloat16) with float32 master weights and dynamic
loss scaling (``fit(..., precision="fp16")``, ``minicnn train --precision fp16``).

``Precision(name)`` is the policy: ``"fp32"`` (the default) changes nothing, the step is
``loop.train_step`` as it always was; ``"fp16"`` computes in float16; ``"bf16"`` in bfloat16,
which NumPy has no dtype for, so it is refused on NumPy (one line saying so) and allowed only
where the array module has a ``bfloat16`` dtype (CuPy has none today either, so it is refused
there too).

How a half-precision step runs (``HalfStep``), the model's parameters staying float32 masters:

1. a *working copy* of the model (a deep copy made once, its parameters and float state in the
   compute dtype) gets the masters' weights (``copyto``, in place, so its replicas' shared
   arrays follow) and the masters' state arrays (BatchNorm running statistics);
2. the input is cast to the compute dtype and the copy runs forward and backward in it; the
   logits are cast up and the loss is computed in float32; the loss gradient is multiplied by
   the loss scale before it is cast down (so small gradients do not flush to zero);
3. the copy's gradients are cast to float32 into the masters' ``grad`` and unscaled (the scale
   is a power of two: exact), then checked for inf/NaN;
4. a finite step: the optimizer steps on the float32 masters and the copy's updated state
   arrays go back to the master model. A non-finite step is skipped: weights, optimizer and
   state stay as they were, the scale is backed off and the skip counted.

``LossScaler`` follows PyTorch's ``torch.cuda.amp.GradScaler`` documented dynamic rule: the
scale starts at 2**16, is halved (``backoff_factor`` 0.5) on a skipped step, and doubled
(``growth_factor`` 2) after ``growth_interval`` (2000) finite steps in a row. bfloat16 has
float32's range, so its scale stays 1 (as PyTorch uses no scaler for it); non-finite steps are
still skipped and counted. Training stops (``fit`` raises TrainingError) after
``MAX_CONSECUTIVE_SKIPS`` skipped steps in a row, or when the scale falls below 1; the error
names the first layer whose forward output is not finite in compute precision on the last
batch (``overflow_report``: one diagnostic forward, each layer's output checked).

On NumPy, float16 is computed without BLAS (NumPy has no half-precision GEMM), so it is slow;
it is there to be correct and tested. On CuPy, ``cupy.matmul`` of float16 arrays calls cuBLAS
(``cublasGemmEx`` with float16 inputs), which runs on the tensor cores of GPUs that have them;
CuPy's compute type for it follows ``CUPY_TF32``/``cupy.cuda.set_compute_type``. No speed is
claimed here: nothing has been measured. The CUDA im2col, col2im and pooling kernels of
``minicnn.kernels.cuda`` have ``__half`` versions that sum in float32 and round once; Dropout
draws its masks in float32 for float16 input (NumPy's generator draws no float16).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from minicnn.core import backend, modes

__all__ = ["Precision", "LossScaler", "HalfStep", "PRECISIONS", "MAX_CONSECUTIVE_SKIPS",
           "overflow_report"]

PRECISIONS = ("fp32", "fp16", "bf16")

MAX_CONSECUTIVE_SKIPS = 50
"""Skipped steps in a row after which training stops as diverged."""


@dataclass
class LossScaler:
    """Dynamic loss scaling (PyTorch GradScaler's rule); ``enabled=False`` keeps the scale at
    1 (bfloat16) while still counting skipped steps."""

    init_scale: float = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (self.init_scale > 0 and self.growth_factor > 1 and
                0 < self.backoff_factor < 1 and self.growth_interval >= 1):
            raise ValueError(f"LossScaler: expected init_scale > 0, growth_factor > 1, "
                             f"0 < backoff_factor < 1, growth_interval >= 1, got {self}")
        self.scale = float(self.init_scale) if self.enabled else 1.0
        self.growth_tracker = 0     # finite steps since the last change of scale
        self.skipped = 0            # skipped steps in all
        self.consecutive = 0        # skipped steps in a row, up to now

    def update(self, finite: bool) -> None:
        """After a step: grow the scale after enough finite steps, back it off after a skip."""
        if finite:
            self.consecutive = 0
            self.growth_tracker += 1
            if self.enabled and self.growth_tracker >= self.growth_interval:
                self.scale *= self.growth_factor
                self.growth_tracker = 0
        else:
            self.skipped += 1
            self.consecutive += 1
            self.growth_tracker = 0
            if self.enabled:
                self.scale *= self.backoff_factor

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.skipped = int(state["skipped"])
        self.consecutive = int(state.get("consecutive", 0))


class Precision:
    """The compute precision of a training run: ``Precision("fp16")``; ``scaler`` options
    (``init_scale``, ``growth_interval``, ...) go to its ``LossScaler``."""

    def __init__(self, name: str = "fp32", **scaler: Any):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name = name
        self.scaler_options = dict(scaler)
        LossScaler(**self.scaler_options)            # bad options fail here, not mid-run

    @classmethod
    def of(cls, value: Any) -> Precision:
        return value if isinstance(value, Precision) else cls(str(value))

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def compute_dtype(self, xp: Any) -> Any:
        """The dtype the model computes in on array module ``xp`` (ValueError, one line, when
        ``xp`` has no such dtype)."""
        if self.name == "fp32":
            return xp.float32
        if self.name == "fp16":
            return xp.float16
        dtype = getattr(xp, "bfloat16", None)
        if dtype is None:
            raise ValueError(f"precision 'bf16' needs a bfloat16 dtype, and {xp.__name__} has "
                             "none (NumPy and CuPy lack one); use 'fp16' or 'fp32'")
        return dtype

    def make_scaler(self) -> LossScaler:
        return LossScaler(**dict(self.scaler_options, enabled=self.name == "fp16"))

    def __repr__(self) -> str:
        return f"Precision({self.name!r})"


def _float_state(model: Any) -> dict[str, Any]:
    return dict(model.named_state()) if hasattr(model, "named_state") else {}


class HalfStep:
    """A training step in half precision for ``model`` (float32 masters), as the module
    docstring describes; ``fit`` makes one when ``precision`` is not fp32."""

    def __init__(self, model: Any, precision: Precision):
        params = model.parameters()
        self.xp = backend.get_array_module(params[0].data)
        self.dtype = precision.compute_dtype(self.xp)
        self.master, self.precision = model, precision
        self.scaler = precision.make_scaler()
        work = copy.deepcopy(model)
        for p in work.parameters():
            p.data, p.grad = p.data.astype(self.dtype), p.grad.astype(self.dtype)
        if hasattr(work, "clear_cache"):
            work.clear_cache()
        self.work = work
        self.pairs = list(zip(model.parameters(), work.parameters()))
        self.last_x: Any = None

    def _load_state(self, into: Any, arrays: dict[str, Any], like: dict[str, Any]) -> None:
        """Set ``into``'s state arrays to ``arrays``, float ones in ``like``'s dtypes."""
        if arrays:
            into.load_named_state({k: v.astype(like[k].dtype) if v.dtype.kind == "f" and
                                   like[k].dtype.kind == "f" else v.copy()
                                   for k, v in arrays.items()})

    def refresh(self) -> None:
        """The working copy gets the masters' weights and state."""
        for master, work in self.pairs:
            self.xp.copyto(work.data, master.data, casting="same_kind")
        state = _float_state(self.master)
        if state:
            self._load_state(self.work, state, _float_state(self.work))

    def __call__(self, loss_fn: Any, optimizer: Any, x: Any, y: Any,
                 correct_count: Any, clip: Any = None) -> tuple[Any, Any, bool]:
        """One step: returns the float32 loss, the correct count and whether it was taken
        (False: skipped, the gradients were not finite). ``clip`` (a ``GradientClip``) clips
        the unscaled float32 gradients of a step that is taken."""
        self.refresh()
        xp, scale = self.xp, self.scaler.scale
        x = x.astype(self.dtype)
        self.last_x = x
        out = self.work.forward(x, training=True, check=False).astype(xp.float32)
        if getattr(self.master, "seen_input_shape", 0) is None:    # as its own forward would
            self.master.seen_input_shape = getattr(self.work, "seen_input_shape", None)
        loss = loss_fn.forward(out, y)
        correct = correct_count(out, y)
        grad = loss_fn.backward()
        for _, work in self.pairs:
            work.zero_grad()
        self.work.backward((grad * grad.dtype.type(scale)).astype(self.dtype))
        inverse = 1.0 / scale
        flags = []
        for master, work in self.pairs:
            xp.multiply(work.grad, inverse, out=master.grad, dtype=master.grad.dtype)
            flags.append(xp.isfinite(master.grad).all())
        finite = bool(xp.stack(flags).all())
        if finite:
            if clip is not None:
                clip(optimizer.params)
            optimizer.step()
            state = _float_state(self.work)
            self._load_state(self.master, state, _float_state(self.master))
        self.scaler.update(finite)
        return loss, correct, finite

    def diverged(self) -> str | None:
        """Why training should stop (too many skips in a row, the scale below 1), or None."""
        s = self.scaler
        if s.consecutive >= MAX_CONSECUTIVE_SKIPS:
            why = f"{s.consecutive} steps in a row were skipped"
        elif s.enabled and s.scale < 1:
            why = f"the loss scale fell to {s.scale:g} (below 1)"
        else:
            return None
        return f"{why}: {overflow_report(self.work, self.last_x, self.precision.name)}"


def overflow_report(work: Any, x: Any, name: str = "fp16") -> str:
    """Which layer's forward output is not finite on batch ``x`` (one diagnostic forward of
    the working copy ``work``, in its dtype, each layer's output checked), or which
    parameter's gradient is not finite when every output is; one sentence."""
    if x is None:
        return "no step ran"
    xp = backend.get_array_module(x)
    if not bool(xp.isfinite(x).all()):
        return (f"the input overflowed {x.dtype} (largest finite value "
                f"{float(xp.finfo(x.dtype).max):g}); scale the input down or use fp32")
    found: list[str] = []
    wrapped = []
    for path, layer in work.named_layers():
        if not path or "forward" in layer.__dict__:
            continue

        def checked(*args: Any, _layer: Any = layer, _path: str = path, **kwargs: Any) -> Any:
            y = type(_layer).forward(_layer, *args, **kwargs)
            outs = y if isinstance(y, tuple) else (y,)
            if not found and any(hasattr(o, "dtype") and not bool(
                    backend.get_array_module(o).isfinite(o).all()) for o in outs):
                found.append(f"{_path} ({type(_layer).__name__})")
            return y

        layer.forward = checked
        wrapped.append(layer)
    workers = work.__dict__.get("workers", "absent")
    work.workers = 1                                  # no replicas: the wrappers see all
    try:
        with modes.no_grad():
            work.forward(x, training=True, check=False)
    finally:
        for layer in wrapped:
            del layer.__dict__["forward"]
        if workers == "absent":
            del work.workers
        else:
            work.workers = workers
        if hasattr(work, "clear_cache"):
            work.clear_cache()
    if found:
        return (f"layer {found[0]} overflowed in {name}: its forward output is not finite; "
                "scale the inputs or weights down, lower the learning rate or use fp32")
    bad = next((n for n, p in work.named_parameters()
                if not bool(xp.isfinite(p.grad).all())), None) \
        if hasattr(work, "named_parameters") else None
    where = f" (first: {bad})" if bad else ""
    return (f"no layer's forward output overflowed in {name}, but the gradients did{where}; "
            "lower the learning rate or use fp32")
