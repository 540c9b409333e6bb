"""Typed configuration: from a composed Hydra config to validated settings and built plugins.

The config groups are the plugin registries: ``cell``, ``optimizer``, ``clip``, ``sampler``, ``data``
(whose ``kind`` picks a dataset plugin) plus ``tracking``. A group's node names its plugin (``name``),
and its other keys are checked against the plugin's options dataclass, so a typo, a wrong type or an
impossible value stops the run before training with a ``ConfigError`` that names the key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import DataError, builtin_path
from .registry import CELLS, CLIPPERS, DATASETS, OPTIMIZERS, SAMPLERS, SCHEDULES, UnknownPluginError

GROUPS = {"cell": CELLS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "clip": CLIPPERS,
          "sampler": SAMPLERS}
TRACKERS = ("mlflow", "none")
HERE = Path(__file__).resolve().parent
# Installed, the configs are the package rnnlab.conf; in a source checkout, the top-level conf/.
CONF_DIR = HERE / "conf" if (HERE / "conf").is_dir() else HERE.parent / "conf"
# The named experiments (group `experiment`): rnnlab.experiments installed, experiments/ in a checkout.
EXPERIMENTS_DIR = HERE / "experiments" if (HERE / "experiments").is_dir() else HERE.parent / "experiments"


class ConfigError(ValueError):
    """A config that cannot run, with a message naming the key and what is allowed."""


@dataclass
class RunSettings:
    """The top-level knobs of a run (their defaults are in conf/config.yaml)."""
    lr: float = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    dtype: str = MISSING
    eval_every: int = MISSING
    sample_every: int = MISSING
    num_samples: int = MISSING
    max_len: int = MISSING
    log_every: int = MISSING
    checkpoint_every: int = MISSING
    patience: int = 0
    min_delta: float = 0.0
    reduction: str = "mean"
    report_samples: int = 0
    gradient_flow_every: int = 0
    threads: int = 0
    resume: Optional[str] = None


POSITIVE = ("lr", "steps", "batch_size", "eval_every", "num_samples", "max_len", "log_every",
            "checkpoint_every")


def _typed(schema, node, where: str):
    """Merge ``node`` (a mapping) into ``schema`` (a dataclass): unknown keys and wrong types fail."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        msg = str(e).splitlines()[0]
        allowed = ", ".join(f.name for f in fields(schema))
        if "not in" in msg or "Key '" in msg and "not" in msg:
            bad = getattr(e, "key", key)
            hint = _did_you_mean(bad, [f.name for f in fields(schema)], where + "." if where else "")
            raise ConfigError(f"Unknown key {where + '.' if where else ''}{bad}: the allowed keys "
                              f"{'of ' + where + ' ' if where else ''}are {allowed}.{hint}") from None
        name = f"{where}.{key}" if where and key else (key or where)
        raise ConfigError(f"{name}: {msg}") from None


def plugin_options(group: str, node) -> tuple[str, dict]:
    """(plugin name, validated options dict) of a group node such as ``cfg.optimizer``."""
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    registry = DATASETS if group == "data" else GROUPS[group]
    meta_keys = ("name", "kind") if group == "data" else ("name",)
    name = node.get("kind") if group == "data" else node.get("name")
    try:
        schema = registry.schema(name)
    except UnknownPluginError as e:
        raise ConfigError(f"{group}{'.kind' if group == 'data' else ''}: {e}") from None
    options = {k: v for k, v in node.items() if k not in meta_keys}
    if schema is None:
        if options:
            raise ConfigError(f"{group} {name!r} takes no options, got {', '.join(options)}")
        return name, {}
    return name, vars(_typed(schema, options, group))


def run_settings(cfg) -> RunSettings:
    """The validated top-level knobs of ``cfg``."""
    top = {f.name: cfg[f.name] for f in fields(RunSettings) if f.name in cfg}
    settings = _typed(RunSettings, top, "")
    for key in POSITIVE:
        if not getattr(settings, key) > 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(settings, key)}")
    if settings.patience < 0:
        raise ConfigError(f"patience must be >= 0 (0: no early stopping), got {settings.patience}")
    if settings.min_delta < 0:
        raise ConfigError(f"min_delta must be >= 0, got {settings.min_delta}")
    if settings.gradient_flow_every < 0 or (settings.gradient_flow_every and
                                            settings.gradient_flow_every % settings.eval_every):
        raise ConfigError(f"gradient_flow_every must be 0 (off) or a multiple of eval_every={settings.eval_every} "
                          f"(it is measured at evaluations), got {settings.gradient_flow_every}")
    if settings.report_samples < 0:
        raise ConfigError(f"report_samples must be >= 0 (0: no final sample report), "
                          f"got {settings.report_samples}")
    if settings.threads < 0:
        raise ConfigError(f"threads must be >= 0 (0: one per available CPU), got {settings.threads}")
    if settings.sample_every < 0:
        raise ConfigError(f"sample_every must be >= 0 (0: only at the end), got {settings.sample_every}")
    if settings.reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be mean (per character) or sum (per sequence), "
                          f"got {settings.reduction!r}")
    if settings.dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {settings.dtype!r}")
    return settings


def build(group: str, cfg):
    """Build the plugin of ``group`` from ``cfg[group]``; a refused value becomes a ``ConfigError``."""
    name, options = plugin_options(group, cfg[group])
    try:
        return GROUPS[group].build(name, **options)
    except ValueError as e:
        raise ConfigError(f"{group}.{e}") from None


def build_dataset(cfg):
    """The dataset of ``cfg.data`` (the built-in dinos.txt when ``path`` is null). The split is fixed
    (seed 0) whatever the run's seed, so runs with different seeds are compared on the same data."""
    kind, options = plugin_options("data", cfg.data)
    path = options.pop("path", None)
    try:
        return DATASETS.get(kind).from_file(builtin_path() if path is None else path, seed=0, **options)
    except DataError as e:
        key = str(e).split(" ", 1)[0]
        raise ConfigError(f"data.{e}" if key in options else f"data: {e}") from None


def check_overrides(overrides: list[str], config_name: str = "config") -> None:
    """Refuse, before Hydra composes anything, an unknown plugin in ``group=name`` and an unknown key in
    ``key=value`` or ``group.key=value``, with the allowed names and a "did you mean"."""
    options = available_options()
    primary = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    chosen = {}
    for entry in primary.get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            for group, name in entry.items():
                chosen[str(group)] = name
    plain = [ov for ov in overrides if "=" in ov and not ov.startswith(("+", "~"))]
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in options:
            continue
        choices = _choices(value)
        for choice in choices:
            if choice not in options[key]:
                raise ConfigError(f"Unknown {key} {choice!r} in the override {ov!r}. "
                                  f"Available {key} options: {', '.join(options[key])}."
                                  f"{_did_you_mean(choice, options[key], key + '=')}")
        chosen[key] = choices[0] if len(choices) == 1 else None
        if key == "experiment" and chosen[key]:
            chosen.update(_experiment_choices(chosen[key]))
    top = [k for k in primary if k not in ("defaults", "hydra")] + [g for g in options if g in chosen]
    for ov in plain:
        key = ov.partition("=")[0]
        head, _, rest = key.partition(".")
        if head.startswith("hydra"):  # hydra.* and hydra/launcher=… are Hydra's own
            continue
        if head not in top:
            raise ConfigError(f"Unknown key {head!r} in the override {ov!r}. Allowed keys: "
                              f"{', '.join(top)}.{_did_you_mean(head, top, '')}")
        if rest and head in options and chosen.get(head):
            allowed = group_keys(head, chosen[head])
            sub = rest.split(".")[0]
            if allowed is not None and sub not in allowed:
                raise ConfigError(f"Unknown key {head}.{sub} in the override {ov!r}: {head} "
                                  f"{chosen[head]!r} has the keys {', '.join(allowed)}."
                                  f"{_did_you_mean(sub, allowed, head + '.')}")


def _experiment_choices(name: str) -> dict:
    """The group choices a named experiment makes (``override /cell: rnn`` → {"cell": "rnn"})."""
    chosen = {}
    for entry in OmegaConf.load(EXPERIMENTS_DIR / "experiment" / f"{name}.yaml").get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            for key, value in entry.items():
                group = str(key).replace("override", "").strip().lstrip("/")
                if "/" not in group:
                    chosen[group] = value
    return chosen


def _did_you_mean(word, candidates, prefix) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1)
    return f" Did you mean {prefix}{close[0]}?" if close else ""


def group_keys(group: str, name: str) -> list[str] | None:
    """The keys of option ``name`` of ``group``: its YAML's keys and its plugin's options."""
    keys = []
    path = CONF_DIR / group / f"{name}.yaml"
    if path.exists():
        keys = [k for k in OmegaConf.load(path) if k != "defaults"]
    registry = GROUPS.get(group)
    if registry is not None and name in registry:
        schema = registry.schema(name)
        keys += ["name"] + ([f.name for f in fields(schema)] if schema else [])
    return sorted(set(keys)) or None


def _choices(value: str) -> list[str]:
    """The plain names of an override value: ``lstm`` or a sweep ``rnn,lstm`` (functions skipped)."""
    if "(" in value or "$" in value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def available_options() -> dict[str, list[str]]:
    """group -> selectable names: YAML files in conf/ plus registered plugins of that family."""
    out = {}
    for group in ("cell", "optimizer", "schedule", "clip", "sampler", "data", "tracking", "experiment"):
        root = EXPERIMENTS_DIR if group == "experiment" else CONF_DIR
        names = {p.stem for p in (root / group).glob("*.yaml")}
        if group in GROUPS:
            names |= set(GROUPS[group].names())
        out[group] = sorted(names)
    return out


def register_plugin_configs() -> None:
    """Offer every registered plugin without a YAML file in conf/ as a Hydra group option, built from
    its options dataclass (so a third-party plugin is selectable as soon as it is installed)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, registry in GROUPS.items():
        for name in registry.names():
            if (CONF_DIR / group / f"{name}.yaml").exists():
                continue
            schema = registry.schema(name)
            node = {"name": name}
            if schema is not None:
                node.update(OmegaConf.to_container(OmegaConf.structured(schema)))
            if group == "optimizer" and "lr" in node:
                node["lr"] = "${lr}"
            cs.store(group=group, name=name, node=node)

