"""Turn client data into a float32 batch a network can take, or say precisely what is wrong."""

from __future__ import annotations

import numpy as np

from app.errors import InvalidInputError
from app.registry import ServedModel

# Deeper nesting than this is never a sample of these networks; the bound also keeps the
# recursive walk far from Python's recursion limit.
MAX_DEPTH = 32
FLOAT32_MAX = float(np.finfo(np.float32).max)

_TYPE_NAMES = {str: "a string", type(None): "null", dict: "an object", bool: "a boolean"}


def check_batch_size(n: int, max_batch: int) -> None:
    """Refuse an empty batch or one larger than ``max_batch``."""
    if n == 0:
        raise InvalidInputError("the batch is empty: send at least one sample")
    if n > max_batch:
        raise InvalidInputError(f"the batch has {n} samples; at most {max_batch} are accepted")


def _shape_message(index: int, shape: tuple[int, ...], model: ServedModel) -> str:
    return (
        f"sample {index} has shape {list(shape)}; model {model.name!r} takes "
        f"{list(model.input_shape)} (or a flat list of {model.input_size} numbers)"
    )


def check_batch(array: np.ndarray, model: ServedModel, max_batch: int) -> np.ndarray:
    """Check a numeric batch against the model and return it as C-contiguous float32.

    ``array`` has shape ``(n, *input_shape)`` or ``(n, prod(input_shape))``. Values must be
    finite and round to a finite float32 (a larger one would become infinity).
    """
    array = np.asarray(array)
    if array.ndim == 0:
        raise InvalidInputError("inputs must be a list of samples, not a single number")
    check_batch_size(len(array), max_batch)
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(f"inputs must be numbers, not {array.dtype.name} values")
    sample_shape = array.shape[1:]
    if sample_shape != model.input_shape and sample_shape != (model.input_size,):
        raise InvalidInputError(_shape_message(0, sample_shape, model))
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        # A float beyond float32's range becomes infinity in the cast: the finite test
        # below then refuses it with NaN and infinity, in one pass over the batch.
        with np.errstate(over="ignore"):
            batch = np.ascontiguousarray(array, dtype=np.float32)
    else:
        # Integers always fit float32's range; float16 and float32 convert exactly.
        batch = np.ascontiguousarray(array, dtype=np.float32)
    if array.dtype.kind == "f" and not np.isfinite(batch).all():
        _refuse_values(array)
    return batch.reshape((len(batch), *model.input_shape))


def _refuse_values(array: np.ndarray) -> None:
    """Raise the InvalidInputError for the first sample holding NaN, infinity or a huge value."""
    # In float64, which holds every float exactly (float16 cannot even hold the bound);
    # a signalling NaN raises numpy's "invalid value" warning in that cast.
    with np.errstate(invalid="ignore"):
        flat = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    finite = np.isfinite(flat).all(axis=1)
    in_range = (np.abs(np.where(np.isfinite(flat), flat, 0)) <= FLOAT32_MAX).all(axis=1)
    bad = ~(finite & in_range)
    index = int(np.argmax(bad))
    if not finite[index]:
        raise InvalidInputError(f"sample {index} holds NaN or infinity; only finite numbers count")
    raise InvalidInputError(
        f"sample {index} holds a value beyond the float32 range (±{FLOAT32_MAX:.4g})")


def _shape_of(value: object, path: str, index: int, depth: int = 0) -> tuple[int, ...]:
    """Return the shape of nested lists of numbers, or raise naming the first bad element."""
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise InvalidInputError(f"sample {index}: {path} is nested more than {MAX_DEPTH} deep")
        shapes = [_shape_of(item, f"{path}[{j}]", index, depth + 1)
                  for j, item in enumerate(value)]
        for j, shape in enumerate(shapes[1:], start=1):
            if shape != shapes[0]:
                raise InvalidInputError(
                    f"sample {index}: ragged rows: {path}[{j}] has shape {list(shape)} "
                    f"but {path}[0] has {list(shapes[0])}"
                )
        return (len(value), *(shapes[0] if shapes else ()))
    # bool is a subclass of int: test it first.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise InvalidInputError(f"sample {index}: {path} is {kind}, not a number")
    return ()


def batch_from_json(
    inputs: object, model: ServedModel, max_batch: int, *, may_hold_booleans: bool = True
) -> np.ndarray:
    """Turn decoded JSON ``inputs`` (a list of samples) into a numeric array.

    Every element must be a number and every sample the model's shape (nested or flat);
    the values themselves (finite, float32 range) are checked by :func:`check_batch`, which
    the dataplane runs on every protocol's batch.

    numpy converts a well-formed batch at C speed, but it silently turns booleans mixed with
    numbers into 1.0/0.0. A caller that knows the raw body holds no ``true``/``false`` token
    passes ``may_hold_booleans=False`` to take that fast path; anything else, and any batch
    numpy cannot convert, goes through a sample-by-sample walk that names the first problem.
    """
    if not isinstance(inputs, list):
        raise InvalidInputError("inputs must be a list of samples")
    check_batch_size(len(inputs), max_batch)
    if not may_hold_booleans:
        try:
            array = np.array(inputs)
        except (ValueError, OverflowError):  # ragged, too deep, or a huge integer: walk it
            array = None
        if array is not None and array.dtype.kind in "fiu":
            return array

    array = np.empty((len(inputs), *model.input_shape), dtype=np.float64)
    for index, sample in enumerate(inputs):
        path = f"inputs[{index}]"
        if not isinstance(sample, list):
            kind = "a number" if isinstance(sample, (int, float)) and not isinstance(
                sample, bool) else _TYPE_NAMES.get(type(sample), type(sample).__name__)
            raise InvalidInputError(f"sample {index}: {path} is {kind}, not a list of numbers")
        shape = _shape_of(sample, path, index)
        if shape != model.input_shape and shape != (model.input_size,):
            raise InvalidInputError(_shape_message(index, shape, model))
        array[index] = np.array(sample, dtype=np.float64).reshape(model.input_shape)
    return array
