"""The MLflow model of a trained rnnlab run, logged as *models from code*: this file plus the
checkpoint's arrays (loaded without pickle), never a pickled object.

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")      # or the logged model's URI
    model.predict({"n": 5})                                        # five names
    model.predict({"n": 3, "prime": "tyr", "temperature": 0.8, "seed": 1})
    model.predict(pandas.DataFrame({"prime": ["a", "b"]}))         # one sample per row
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class NameGenerator(PythonModel):
    def load_context(self, context):
        from rnnlab.checkpoint import data_kind, load, restore_model
        from rnnlab.data import ends_at_eol
        ckpt = load(context.artifacts["checkpoint"])
        self.lm, self.params, self.vocab = restore_model(ckpt, "model checkpoint")
        self.stop_at_eol = ends_at_eol(data_kind(ckpt))

    def predict(self, context, model_input, params=None):
        """Generate samples. ``model_input``: {"n", "prime", "temperature", "seed", "max_len"} (all
        optional), or a table with a ``prime`` column (one sample per row). Returns a list of str."""
        import numpy as np

        from rnnlab.sampling import SoftmaxSampler, generate

        opts = dict(params or {})
        primes = None
        if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a DataFrame
            rows = model_input.to_dict("records")
            if rows and "prime" in rows[0]:
                primes = [str(r.get("prime") or "") for r in rows]
            elif rows:
                opts.update(rows[0])
        elif isinstance(model_input, dict):
            opts.update(model_input)
        sampler = SoftmaxSampler(float(opts.get("temperature", 1.0)))
        seed = int(opts.get("seed", 0))
        max_len = int(opts.get("max_len", 50))
        if primes is None:
            return generate(self.lm, self.params, self.vocab, sampler, np.random.default_rng(seed),
                            n=int(opts.get("n", 10)), prime=str(opts.get("prime", "") or ""),
                            max_len=max_len, stop_at_eol=self.stop_at_eol)
        rng = np.random.default_rng(seed)
        return [generate(self.lm, self.params, self.vocab, sampler, rng, n=1, prime=p, max_len=max_len,
                         stop_at_eol=self.stop_at_eol)[0] for p in primes]


mlflow.models.set_model(NameGenerator())
