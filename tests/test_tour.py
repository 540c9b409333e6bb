"""The learners' notebook experiments/tour.ipynb runs top to bottom, in under two minutes, and is kept
in git without outputs."""

import time
from pathlib import Path

import pytest

from conftest import require_module

TOUR = Path(__file__).resolve().parent.parent / "experiments" / "tour.ipynb"


def test_tour_is_stored_without_outputs():
    nbformat = require_module("nbformat", "the `test` extra (nbformat)")
    nb = nbformat.read(TOUR, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_tour_runs_top_to_bottom_in_under_two_minutes():
    nbformat = require_module("nbformat", "the `test` extra (nbformat)")
    nbclient = require_module("nbclient", "the `test` extra (nbclient, ipykernel)")
    require_module("ipykernel", "the `test` extra (ipykernel)")
    nb = nbformat.read(TOUR, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(TOUR.parent)}}).execute()  # raises on error
    seconds = time.perf_counter() - start
    assert seconds < 120, f"the tour took {seconds:.0f} s"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "relative error" in text and "mean surprise" in text and "at initialisation" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4   # the learning curves, the cells, the gates, the gradient flow
