"""Parameters, gradients and optimizer moments in one contiguous buffer each.

A ``FlatParams`` is a dict of named arrays that are views into one vector, ``.flat``: code that knows the
names (cells, checkpoints, gradient checks) sees a plain dict, while code that treats every entry alike
(global-norm clipping, the optimizers) works on the whole vector in a handful of passes. Matrices come
first in the buffer, so the ones that weight decay applies to are the prefix ``flat[:n_matrix]``.
"""

from __future__ import annotations

import numpy as np


class FlatParams(dict):
    """Named views into one flat buffer. ``FlatParams(arrays)`` copies ``arrays`` into a new buffer."""

    def __init__(self, arrays: dict, dtype=None, fill=None):
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        dtype = np.dtype(dtype or np.result_type(*arrays.values()))
        names = sorted(arrays, key=lambda k: arrays[k].ndim < 2)    # matrices first (stable)
        sizes = [arrays[k].size for k in names]
        self.flat = np.empty(sum(sizes), dtype)
        self.n_matrix = sum(s for k, s in zip(names, sizes) if arrays[k].ndim >= 2)
        offset = 0
        for name, size in zip(names, sizes):
            view = self.flat[offset:offset + size].reshape(arrays[name].shape)
            if fill is None:
                view[...] = arrays[name]
            elif fill != "empty":
                view[...] = fill
            super().__setitem__(name, view)
            offset += size
        self.layout = tuple((k, self[k].shape) for k in names)

    @classmethod
    def like(cls, other: dict, fill=0, dtype=None) -> "FlatParams":
        """A new buffer with the names and shapes of ``other``: filled with ``fill``, or uninitialised
        (``fill="empty"``)."""
        return cls(other, dtype=dtype or np.result_type(*other.values()), fill=fill)

    def __setitem__(self, name, value):
        """Assigning an existing name copies into its view (the buffer stays whole)."""
        if name not in self:
            raise KeyError(f"{name!r} is not one of the parameters {list(self)}")
        self[name][...] = value

    def copy(self) -> "FlatParams":
        return FlatParams(self, dtype=self.flat.dtype)

    def same_layout(self, other) -> bool:
        return isinstance(other, FlatParams) and other.layout == self.layout and other.flat.dtype == self.flat.dtype

    def __reduce__(self):   # pickle and deepcopy rebuild the buffer from the named arrays
        return (FlatParams, (dict(self), self.flat.dtype))
