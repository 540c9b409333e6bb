"""Typed configuration: every option declared once, as a dataclass field, and the checks against it.

The top-level options of a run are the fields of ``RunSettings`` (default, meaning, rule): the training
loop's own (``train.TrainOptions``) and the run's. A plugin's
options are the fields of its dataclass (``Adam``'s ``beta1``, ``Cell.Config``'s ``hidden_size``…): the
config groups ``cell``, ``optimizer``, ``schedule``, ``clip``, ``sampler`` and ``data`` are made from the
registries and stored in Hydra's ConfigStore, so no YAML repeats a default and a third-party plugin is
selectable as soon as it is installed. The nodes are stored untyped and checked here, after composition,
against the same dataclasses: a typo, a wrong type or an impossible value stops the run before training
with a ``ConfigError`` that names the key and what is allowed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .checks import check_options, option
from .corpora import fetch, is_url
from .data import LINES, DataError, load_dataset
from .registry import CELLS, CLIPPERS, DATASETS, OPTIMIZERS, SAMPLERS, SCHEDULES, UnknownPluginError
from .train import TrainOptions

GROUPS = {"cell": CELLS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "clip": CLIPPERS,
          "sampler": SAMPLERS}
# The data group: one option per dataset kind (the file to read is required), plus presets stating how
# they differ from their kind.
DATA_PRESETS = {"dinos": (LINES, {"path": None, "lowercase": True})}   # the built-in names, lowercased
TRACKERS = ("mlflow", "none")
HERE = Path(__file__).resolve().parent
# Installed, the configs are the package rnnlab.conf; in a source checkout, the top-level conf/.
CONF_DIR = HERE / "conf" if (HERE / "conf").is_dir() else HERE.parent / "conf"
# The named experiments (group `experiment`): rnnlab.experiments installed, experiments/ in a checkout.
EXPERIMENTS_DIR = HERE / "experiments" if (HERE / "experiments").is_dir() else HERE.parent / "experiments"


class ConfigError(ValueError):
    """A config that cannot run, with a message naming the key and what is allowed."""


@dataclass
class LearningRate:
    lr: float = option(0.005, "learning rate, fed to the optimizer (optimizer.lr)", "> 0")


@dataclass
class RunSettings(TrainOptions, LearningRate):
    """The top-level options of a run (``python -m rnnlab steps=3000 lr=0.003``): ``lr``, the training
    loop's options (``TrainOptions``: steps, batch_size, seed, eval_every, …) and these."""
    dtype: str = option("float32", "float32 (fast) or float64 (exact checks)", {"float32": None, "float64": None})
    threads: int = option(0, "CPUs sharing a training batch: from 2, a batch with enough work runs in two "
                          "processes, split by its sequences or (a wide one-layer RNN, LSTM or GRU) by its "
                          "hidden units", ">= 0",
                          zero="one per available CPU")
    log_every: int = option(100, "a progress line in the log every N steps", "> 0")
    reduction: str = option("mean", "what the gradients are of: the loss per character or per sequence (as "
                            "the course)", {"mean": "per character", "sum": "per sequence"})
    checkpoint_every: int = option(200, "write the last checkpoint every N steps (the best one at each "
                                   "improvement)", "> 0")
    resume: str | None = option(None, "a checkpoint path or an MLflow run id to continue from")
    gradient_flow_every: int = option(0, "log the gradient flow (grad_flow_k1 … k100) to MLflow every N steps, "
                                      "a multiple of eval_every", ">= 0", zero="off")


def run_settings(cfg) -> RunSettings:
    """The validated top-level options of ``cfg``."""
    top = {f.name: cfg[f.name] for f in fields(RunSettings) if f.name in cfg}
    settings = _typed(RunSettings, top, "")
    try:
        check_options(settings)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if settings.gradient_flow_every % settings.eval_every:
        raise ConfigError(f"gradient_flow_every must be 0 (off) or a multiple of eval_every={settings.eval_every} "
                          f"(it is measured at evaluations), got {settings.gradient_flow_every}")
    return settings


def hydra_config():
    """Hydra's config of the running job (None outside a Hydra app): its run directory, overrides…"""
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    """Whether this job is a trial of a sweep (``-m``, or a preset that sets ``hydra.mode: MULTIRUN``)."""
    from hydra.types import RunMode
    hc = hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def _typed(schema, node, where: str):
    """Merge ``node`` (a mapping) into ``schema`` (a dataclass): unknown keys and wrong types fail.
    Returns the merged values as an instance of ``schema`` (a plugin's: as a dict, unbuilt)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        if schema is RunSettings:
            return OmegaConf.to_object(merged)
        return OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        msg = str(e).splitlines()[0]
        prefix = where + "." if where else ""
        if "not in" in msg or ("Key '" in msg and "not" in msg):
            known = [f.name for f in fields(schema)]
            raise ConfigError(f"Unknown key {prefix}{getattr(e, 'key', key)}: the allowed keys "
                              f"{'of ' + where + ' ' if where else ''}are {', '.join(known)}."
                              f"{_did_you_mean(getattr(e, 'key', key), known, prefix)}") from None
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
    return name, _typed(schema, options, group)


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
    if options.get("path") in (None, "???") and cfg.data.get("name") not in DATA_PRESETS:
        raise ConfigError(f"data={cfg.data.get('name')} needs a file: give data.path=<a UTF-8 text file>")
    try:
        if is_url(options.get("path")):   # downloaded once, into the user's cache (rnnlab/corpora.py)
            options["path"] = str(fetch(options["path"]))
        return load_dataset(kind, seed=0, **options)
    except DataError as e:
        key = str(e).split(" ", 1)[0]
        raise ConfigError(f"data.{e}" if key in options else f"data: {e}") from None


# ------------------------------------------------------------------------- the config groups

def _defaults(schema) -> dict:
    """The options of a dataclass with their defaults (``???`` where there is none)."""
    return OmegaConf.to_container(OmegaConf.structured(schema)) if schema is not None else {}


def option_nodes() -> dict[str, dict[str, dict]]:
    """group -> option name -> config node, for the plugin groups and ``data``, made from the options
    dataclasses of the registered plugins (third-party ones included)."""
    nodes = {group: {name: {"name": name, **_defaults(registry.schema(name))} for name in registry.names()}
             for group, registry in GROUPS.items()}
    for node in nodes["optimizer"].values():
        if "lr" in node:
            node["lr"] = "${lr}"   # the run's lr is the optimizer's
    nodes["data"] = {kind: {"name": kind, "kind": kind, **_defaults(DATASETS.schema(kind)), "path": "???"}
                     for kind in DATASETS.names()}
    for name, (kind, delta) in DATA_PRESETS.items():
        nodes["data"][name] = {**nodes["data"][kind], "name": name, **delta}
    return nodes


def register_configs() -> None:
    """Store the top-level options (``settings``, the first entry of conf/config.yaml's defaults) and
    every option of the plugin groups in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="settings", node=_defaults(RunSettings))
    for group, options in option_nodes().items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)


def available_options() -> dict[str, list[str]]:
    """group -> selectable names: the plugin groups' options, the trackers and the named experiments."""
    out = {group: sorted(names) for group, names in option_nodes().items()}
    out["tracking"] = sorted(p.stem for p in (CONF_DIR / "tracking").glob("*.yaml"))
    out["experiment"] = sorted(p.stem for p in (EXPERIMENTS_DIR / "experiment").glob("*.yaml"))
    return {g: out[g] for g in ("cell", "optimizer", "schedule", "clip", "sampler", "data", "tracking",
                                "experiment")}


def group_keys(group: str, name: str) -> list[str] | None:
    """The keys of option ``name`` of ``group`` (None if unknown)."""
    node = option_nodes().get(group, {}).get(name)
    path = CONF_DIR / group / f"{name}.yaml"
    if node is None and path.exists():
        node = {k: v for k, v in OmegaConf.load(path).items() if k != "defaults"}
    return sorted(node) if node is not None else None


# ------------------------------------------------------------- overrides checked before Hydra

def parse_overrides(overrides: list[str]) -> None:
    """Refuse an override Hydra's grammar cannot read, saying which and how to quote it (an unquoted
    non-ASCII or special character is the usual cause)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    parser = OverridesParser.create()
    for ov in overrides:
        if "=" not in ov and not ov.startswith("~"):
            continue  # not an override (e.g. the value of --cfg)
        try:
            parser.parse_overrides([ov])
        except HydraException as e:
            key, _, value = ov.partition("=")
            hint = (f"; quote the value: '{key}=\"{value}\"' (with the single quotes, for the shell)"
                    if value and (not value.isascii() or any(c in value for c in " ,[]{}()'\"=:$")) else "")
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"cannot read the override {ov!r} ({reason}){hint}") from None


def check_overrides(overrides: list[str], config_name: str = "config") -> None:
    """Refuse, before Hydra composes anything, an override Hydra cannot read, an unknown plugin in
    ``group=name`` and an unknown key in ``key=value`` or ``group.key=value``, with the allowed names and
    a "did you mean"."""
    parse_overrides(overrides)
    options = available_options()
    primary = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    chosen = _default_choices(primary)
    if config_name != "config":  # another command (generate, inspect) takes only the groups it declares
        options = {group: names for group, names in options.items() if group in chosen}
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if sep and key in options:
            chosen.update(_checked_choice(key, value, ov, options[key]))
    top = [k for k in primary if k not in ("defaults", "hydra")]
    if config_name == "config":
        top = [f.name for f in fields(RunSettings)] + top
    top += [g for g in options if g in chosen]
    for ov in overrides:
        key = ov.partition("=")[0]
        if ov.startswith("~") and key.lstrip("~") in options and key.lstrip("~") != "experiment":
            group = key.lstrip("~")
            raise ConfigError(f"{ov!r} removes the {group} group, which a run needs; choose another with "
                              f"{group}=<name> (available: {', '.join(options[group])})")
        if "=" in ov and not ov.startswith("~"):
            _check_key(ov.lstrip("+"), top, options, chosen)


def _default_choices(primary) -> dict:
    """group -> option chosen by the defaults list of a primary config."""
    return {str(group): name for entry in primary.get("defaults", []) if isinstance(entry, (dict, DictConfig))
            for group, name in entry.items()}


def _checked_choice(group: str, value: str, ov: str, known: list[str]) -> dict:
    """The choices ``group=value`` makes (a named experiment's included), each checked against ``known``."""
    choices = _choices(value)
    if not value.strip():
        raise ConfigError(f"{ov!r} chooses no {group}; available {group} options: {', '.join(known)}")
    for choice in choices:
        if choice not in known:
            raise ConfigError(f"Unknown {group} {choice!r} in the override {ov!r}. "
                              f"Available {group} options: {', '.join(known)}."
                              f"{_did_you_mean(choice, known, group + '=')}")
    chosen = {group: choices[0] if len(choices) == 1 else None}
    if group == "experiment" and chosen[group]:
        chosen.update(_experiment_choices(chosen[group]))
    return chosen


def _check_key(ov: str, top: list[str], options: dict, chosen: dict) -> None:
    """Refuse ``key=value`` or ``group.key=value`` when the key is unknown."""
    head, _, rest = ov.partition("=")[0].partition(".")
    if head.startswith("hydra"):  # hydra.* and hydra/launcher=… are Hydra's own
        return
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


def _choices(value: str) -> list[str]:
    """The plain names of an override value: ``lstm`` or a sweep ``rnn,lstm`` (functions skipped)."""
    if "(" in value or "$" in value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
