"""See inside the network: what a trained character model computes, and how its gradients flow.

Each view is a NumPy measure you can call from a notebook, and a picture:

* ``surprise`` — the loss of each character of a text and the model's top guesses (``surprise.py``);
* ``cells`` — which units track simple properties of the text, by ``|Pearson r|`` (``cells.py``);
* ``gates`` — how often each gate unit is saturated shut or open (``gates.py``);
* ``gradient_flow`` — ‖∂loss_t/∂h_{t−k}‖ against the distance k (``gradflow.py``).

All of them start from a ``Reading`` (``reading.py``): the model run over a text, every layer's values
at every step. ``views.write_views`` writes them all to a folder; ``python -m rnnlab.inspect`` is the
command (``__main__.py``).
"""

from .cells import rank_units, text_properties
from .gates import gate_saturation, saturation
from .gradflow import gradient_flow
from .reading import Reading, prepare_text, read
from .surprise import surprise

__all__ = ["Reading", "gate_saturation", "gradient_flow", "prepare_text", "rank_units", "read", "saturation",
           "surprise", "text_properties"]
