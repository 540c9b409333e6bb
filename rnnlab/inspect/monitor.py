"""Gradient flow measured during training: a training-loop callback (``rnnlab.train.Callback``).

    monitor = GradientFlowMonitor(lm, params, heldout_ids, every=500, listeners=[tracker])
    train(lm, params, ds, opt, clip, TrainOptions(steps=5000), callbacks=[tracker, monitor])

At every ``every``-th evaluation step it measures the gradient flow of the parameters being trained (the
``params`` dict, updated in place by ``train``) on held-out windows, and hands the top layer's mean
``‖∂loss_t/∂h_{t−k}‖`` at a few distances to each listener's ``on_report`` as metrics
``grad_flow_k{k}`` — what an MLflow tracker logs, so a sweep shows how the flow changes as a run trains.
"""

from __future__ import annotations

import numpy as np

from ..train import Callback
from .gradflow import gradient_flow


class GradientFlowMonitor(Callback):
    def __init__(self, lm, params: dict, ids, every: int, listeners=(), distances=(1, 10, 25, 50, 100),
                 windows: int = 128, seed: int = 0):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.lm, self.params, self.ids, self.every = lm, params, np.asarray(ids), every
        self.listeners, self.windows, self.seed = list(listeners), windows, seed
        self.max_distance = min(max(distances), len(self.ids) - 2)
        if self.max_distance < 1:
            raise ValueError(f"{len(self.ids)} held-out characters are too few to measure a gradient flow")
        self.distances = sorted({d for d in distances if d <= self.max_distance} | {self.max_distance})
        self.history: dict[int, dict] = {}     # step → the metrics reported then

    def measure(self) -> dict:
        """The metrics of the parameters as they are now: ``grad_flow_k{k}`` for each distance."""
        flow = gradient_flow(self.lm, self.params, self.ids, self.max_distance, self.windows,
                             np.random.default_rng(self.seed))   # the same windows every time
        return {f"grad_flow_k{k}": float(flow.mean[-1, k]) for k in self.distances}

    def on_eval(self, step, metrics):
        if (step + 1) % self.every:
            return
        self.history[step] = m = self.measure()
        for listener in self.listeners:
            listener.on_report(step, m)
