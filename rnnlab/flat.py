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

    def __init__(self, arrays: dict, dtype=None, fill=None, alloc=None):
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        dtype = np.dtype(dtype or np.result_type(*arrays.values()))
        names = sorted(arrays, key=lambda k: arrays[k].ndim < 2)    # matrices first (stable)
        sizes = [arrays[k].size for k in names]
        self.alloc = alloc       # where the buffer comes from: alloc(n, dtype), or None for np.empty
        self.n_matrix = sum(s for k, s in zip(names, sizes) if arrays[k].ndim >= 2)
        self.layout = tuple((k, arrays[k].shape) for k in names)
        self._bind((alloc or np.empty)(sum(sizes), dtype))
        for name in names:
            if fill is None:
                self[name][...] = arrays[name]
            elif fill != "empty":
                self[name][...] = fill

    def _bind(self, flat) -> None:
        """Make ``flat`` the buffer: the named entries become views into it."""
        self.flat, offset = flat, 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            super().__setitem__(name, flat[offset:offset + size].reshape(shape))
            offset += size

    @classmethod
    def like(cls, other: dict, fill=0, dtype=None, same_memory: bool = False) -> "FlatParams":
        """A new buffer with the names and shapes of ``other``: filled with ``fill``, or uninitialised
        (``fill="empty"``); in private memory, or with ``same_memory`` from the same memory as ``other``'s
        when it is a FlatParams (its ``alloc``: shared memory for buffers that live beside parameters which
        ``rnnlab.split`` moved there — the optimizer's moments, the split's gradients)."""
        return cls(other, dtype=dtype or np.result_type(*other.values()), fill=fill,
                   alloc=getattr(other, "alloc", None) if same_memory else None)

    @classmethod
    def over(cls, flat, layout) -> "FlatParams":
        """Named views into an existing buffer ``flat`` with ``layout`` (another FlatParams' ``layout``)."""
        out = cls.__new__(cls)
        out.alloc, out.layout = None, layout
        out.n_matrix = sum(int(np.prod(shape)) for _, shape in layout if len(shape) >= 2)
        out._bind(flat)
        return out

    def relocate(self, alloc) -> None:
        """Move the buffer into memory from ``alloc(n, dtype)`` (shared memory: ``rnnlab.split``), in place.
        Arrays taken from this dict before the move keep showing the old buffer."""
        flat = alloc(self.flat.size, self.flat.dtype)
        flat[...] = self.flat
        self.alloc = alloc
        self._bind(flat)

    def __setitem__(self, name, value):
        """Assigning an existing name copies into its view (the buffer stays whole)."""
        if name not in self:
            raise KeyError(f"{name!r} is not one of the parameters {list(self)}")
        self[name][...] = value

    def copy(self) -> "FlatParams":
        """A copy in ordinary memory."""
        return FlatParams(self, dtype=self.flat.dtype)

    def same_layout(self, other) -> bool:
        return isinstance(other, FlatParams) and other.layout == self.layout and other.flat.dtype == self.flat.dtype

    def __reduce__(self):   # pickle and deepcopy rebuild the buffer from the named arrays
        return (FlatParams, (dict(self), self.flat.dtype))
