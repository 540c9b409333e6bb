"""The MLflow model of a trained rnnlab run, logged as *models from code*: this file plus the
checkpoint's arrays (loaded without pickle), never a pickled object.

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")      # or the logged model's URI
    model.predict({"n": 5})                                        # five names
    model.predict({"n": 3, "prime": "tyr", "temperature": 0.8, "seed": 1})
    model.predict(pandas.DataFrame({"prime": ["a", "b"]}))         # one request per row: a name each
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class NameGenerator(PythonModel):
    def load_context(self, context):
        from rnnlab.checkpoint import data_kind, load, restore_model
        from rnnlab.data import ends_at_eol
        ckpt = load(context.artifacts["checkpoint"])
        self.lm, self.params, self.vocab = restore_model(ckpt, "model checkpoint")
        self.stop_at_eol = ends_at_eol(data_kind(ckpt))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Generate samples. ``model_input``: a table of requests, one per row, with the optional columns
        "prime", "n", "temperature", "seed", "max_len" ("", 1, 1.0, 0, 50); a dict of scalars is one
        request (MLflow makes it a one-row table, checked against the logged signature). Returns the
        samples of every request, in order, as a list of str."""
        import numpy as np

        from rnnlab.sampling import SoftmaxSampler, generate

        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
            requests = model_input.to_dict("records")
        elif isinstance(model_input, dict):
            requests = [model_input]
        else:
            requests = list(model_input)
        out = []
        for request in requests:
            opts = {**(params or {}), **{k: v for k, v in dict(request).items() if v is not None and v == v}}
            sampler = SoftmaxSampler(float(opts.get("temperature", 1.0)))
            out += generate(self.lm, self.params, self.vocab, sampler, np.random.default_rng(int(opts.get("seed", 0))),
                            n=int(opts.get("n", 1)), prime=str(opts.get("prime", "") or ""),
                            max_len=int(opts.get("max_len", 50)), stop_at_eol=self.stop_at_eol,
                            min_len=1)   # a name has at least one character
        return out


mlflow.models.set_model(NameGenerator())
