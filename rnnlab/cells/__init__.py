"""The fast, batched engine: one module per cell, registered in ``rnnlab.registry.CELLS``.

Every cell has the same interface (time-major shapes, see ``base``)::

    params = cell.init(input_size, hidden_size, rng, dtype)
    (hs, state_T), cache = cell.forward(x, state0, params, mask)
    grads, (dx, dstate0) = cell.backward(dhs, cache, dstate_T)
    state = cell.step(x_t, state, params)          # one step, for sampling
"""

from .base import Cell
from .gru import GRU
from .lnlstm import LNLSTM
from .lstm import LSTM
from .rnn import RNN

__all__ = ["Cell", "RNN", "LSTM", "GRU", "LNLSTM"]
