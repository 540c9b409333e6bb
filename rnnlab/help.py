"""The ``--help`` pages of the commands, made from the options' declarations.

The top-level keys are the fields of ``RunSettings`` (their default, meaning and rule); a config group's
keys are the fields of its plugins' dataclasses (the meaning: the field's ``doc``, or the comment on its
line in the source); the tracking and command configs are YAML whose keys carry their meaning as a
comment. Nothing here repeats a default or a description, so the pages cannot drift from the code.
Hydra's own page stays available as ``--hydra-help``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields

from omegaconf import OmegaConf

from .config import CONF_DIR, EXPERIMENTS_DIR, GROUPS, RunSettings, option_nodes
from .registry import DATASETS

_COMMENTED = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+?)\s*$")
WIDTH = 30   # column of the descriptions
# What a key means where its declaration (in a module this page does not own) carries no description.
UNDOCUMENTED = {"cell.hidden_size": "units per layer (H)", "cell.num_layers": "stacked layers",
                "optimizer.eps": "added to the denominator", "optimizer.beta1": "decay of the mean of the gradients",
                "optimizer.beta2": "decay of the mean of their squares", "optimizer.momentum": "decay of the velocity",
                "optimizer.rho": "decay of the mean of the squared gradients",
                "schedule.min_factor": "the last lr, as a factor of lr", "schedule.every": "steps between decays",
                "schedule.gamma": "the factor of each decay", "clip.max_norm": "the largest global gradient norm",
                "clip.max_value": "the largest absolute gradient entry", "sampler.temperature": "softmax temperature",
                "sampler.k": "sample among the k likeliest", "sampler.p": "sample among the likeliest of total mass p",
                "data.lowercase": "lowercase the text first"}


def comment_docs(source: str) -> dict[str, str]:
    """key -> the comment at the end of its line, for ``key: … # comment`` lines (Python or YAML)."""
    return {m.group(1): m.group(2) for m in map(_COMMENTED.match, source.splitlines()) if m}


def field_docs(schema) -> dict[str, str]:
    """field name -> what it means, for a dataclass: its ``doc`` metadata, else its line's comment in
    the source of the class (or of the base that declares it)."""
    docs = {}
    for cls in reversed(getattr(schema, "__mro__", ())):
        try:
            docs.update(comment_docs(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
    for f in fields(schema) if schema is not None else ():
        if f.metadata.get("doc"):
            docs[f.name] = f.metadata["doc"]
    return docs


def rule_text(f) -> str:
    """The rule of an ``option`` field, as a short suffix: ``> 0``, ``0: never``, ``float32|float64``."""
    rule, zero = f.metadata.get("rule"), f.metadata.get("zero")
    if isinstance(rule, dict):
        return " | ".join(rule)
    parts = [p for p in (rule, f"0: {zero}" if zero else None) if p]
    return "; ".join(parts)


def _line(key: str, text: str, indent: int = 2) -> str:
    left = " " * indent + key
    if not text:
        return left
    return f"{left:<{WIDTH}} {text}" if len(left) < WIDTH else f"{left}\n{'':<{WIDTH}} {text}"


def _value(v) -> str:
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v) if v != "" else '""'


def main_keys() -> list[str]:
    lines = []
    for f in fields(RunSettings):
        default = f.default if f.default is not MISSING else "???"
        rule = rule_text(f)
        lines.append(_line(f"{f.name}={_value(default)}", f.metadata.get("doc", "") + (f" ({rule})" if rule else "")))
    return lines


def group_lines(group: str, default: str | None) -> list[str]:
    """``group`` with its options (the default starred) and every key of them: default, meaning, and
    which options have it when not all do."""
    nodes = option_nodes()[group]
    registry = DATASETS if group == "data" else GROUPS[group]
    names = sorted(nodes)
    lines = [_line(group, ", ".join(n + ("*" if n == default else "") for n in names))]
    keys: dict[str, dict] = {}
    for name in names:
        kind = nodes[name].get("kind", name)
        docs = field_docs(registry.schema(kind)) if registry.schema(kind) is not None else {}
        for key, value in nodes[name].items():
            if key in ("name", "kind"):
                continue
            entry = keys.setdefault(key, {"values": {}, "doc": docs.get(key, "")})
            entry["values"][name] = value
            entry["doc"] = entry["doc"] or docs.get(key, "")
    for key, entry in keys.items():
        values = entry["values"]
        shown = values.get(default, next(iter(values.values())))
        only = "" if len(values) == len(names) else f" [{', '.join(values)}]"
        doc = entry["doc"] or UNDOCUMENTED.get(f"{group}.{key}") or ("the run's lr" if shown == "${lr}" else "")
        if group == "data" and key == "path":
            doc = "the text file (dinos: the built-in names)"
        lines.append(_line(f"{group}.{key}={_value(shown)}", (doc + only).strip(), 4))
    return lines


def yaml_group_lines(group: str, default: str | None) -> list[str]:
    """A group of YAML options (tracking): the options, and each one's keys with their comments."""
    paths = sorted((CONF_DIR / group).glob("*.yaml"))
    lines = [_line(group, ", ".join(p.stem + ("*" if p.stem == default else "") for p in paths))]
    for p in paths:
        text = p.read_text()
        docs = comment_docs(text)
        for key, value in OmegaConf.load(p).items():
            if key not in ("name", "defaults"):
                lines.append(_line(f"{group}.{key}={_value(value)}", f"{docs.get(key, '')} [{p.stem}]".strip(), 4))
    return lines


def experiment_lines() -> list[str]:
    """The named experiments, each with the first line of its description."""
    lines = [_line("experiment", "a named preset (experiments/experiment/, only its differences from these):")]
    for p in sorted((EXPERIMENTS_DIR / "experiment").glob("*.yaml")):
        lines.append(_line(f"experiment={p.stem}", _first_sentence(p.read_text()), 4))
    return lines


def _first_sentence(yaml_text: str, limit: int = 78) -> str:
    """The first sentence of a YAML file's leading comment, at most ``limit`` characters."""
    words = []
    for line in yaml_text.splitlines():
        if not line.startswith("#") or line.startswith("#   "):
            break
        if "@package" not in line:
            words.append(line.lstrip("# ").strip())
    text = re.split(r"(?<=[.:])\s", " ".join(words), maxsplit=1)[0].rstrip(".:")
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0] + " …"


OTHER_COMMANDS = [
    ("python -m rnnlab --plugins", "the installed plugins of every registry (third-party ones too)"),
    ("python -m rnnlab --cfg job", "the composed config of a command line (add your overrides)"),
    ("python -m rnnlab --hydra-help", "Hydra's own flags: -m, --cfg, --info, -sc, hydra.* keys"),
    ("python -m rnnlab.generate --help", "sample from a trained model (checkpoint or MLflow run)"),
    ("python -m rnnlab.inspect --help", "look inside a trained model: surprise, cells, gates, gradient flow"),
    ("python -m rnnlab.compare --help", "the runs of a sweep or an experiment side by side"),
]


def train_help() -> str:
    choices = {"cell": "lstm", "optimizer": "adam", "schedule": "constant", "clip": "norm", "sampler": "softmax",
               "data": "dinos", "tracking": "mlflow"}
    out = ["rnnlab: train a character-level language model (RNN, LSTM or GRU in NumPy) on a text file.",
           "Hydra composes the run from the options below; MLflow tracks it (./mlflow.db).",
           "",
           "Usage",
           _line("python -m rnnlab [key=value …]", "train one model (default: an LSTM on dinosaur names)"),
           _line("python -m rnnlab -m key=a,b …", "a sweep, one run per combination (Hydra multirun)"),
           _line("rnnlab …", "the same, as the installed command"),
           "",
           "Main keys (key=default: meaning (allowed))"]
    out += main_keys()
    out += ["", "Config groups (group=option picks a plugin, * the default; group.key=value sets its options;",
            "[…]: the options that have the key)"]
    for group in ("cell", "optimizer", "schedule", "clip", "sampler", "data"):
        out += group_lines(group, choices[group])
    out += yaml_group_lines("tracking", choices["tracking"])
    out += experiment_lines()
    out += ["", "Other commands"] + [_line(c, what) for c, what in OTHER_COMMANDS]
    out += ["", "Tab completion of keys and options in bash, for the installed command `rnnlab`:",
            '  eval "$(rnnlab -sc install=bash)"      (in ~/.bashrc to keep it)',
            "", "Examples: python -m rnnlab cell=gru cell.hidden_size=128 lr=0.003 steps=2000",
            "          python -m rnnlab data=lines data.path=names.txt data.test_fraction=0.1",
            "          python -m rnnlab -m cell=rnn,lstm,gru lr=0.003,0.01"]
    return "\n".join(out)


def command_help(config_name: str, usage: list[tuple[str, str]], about: str) -> str:
    """The page of a command configured by ``conf/<config_name>.yaml``: its keys with their comments,
    and the groups it accepts (only those)."""
    path = CONF_DIR / f"{config_name}.yaml"
    text = path.read_text()
    docs = comment_docs(text)
    cfg = OmegaConf.load(path)
    out = [about, "", "Usage"] + [_line(c, what) for c, what in usage] + ["", "Keys (key=default: meaning)"]
    for key, value in cfg.items():
        if key not in ("defaults", "hydra"):
            out.append(_line(f"{key}={_value(value)}", docs.get(key, "")))
    groups = [str(g) for entry in cfg.get("defaults", []) if not isinstance(entry, str)
              for g in entry if not str(g).startswith("override")]
    if groups:
        out += ["", "Config groups"]
        default = {str(g): v for entry in cfg.get("defaults", []) if not isinstance(entry, str) for g, v in entry.items()}
        for group in groups:
            out += group_lines(group, default[group]) if group in GROUPS else yaml_group_lines(group, default[group])
    return "\n".join(out)


def generate_help() -> str:
    return command_help("generate", [
        ("python -m rnnlab.generate checkpoint=<path.npz> [key=value …]", ""),
        ("python -m rnnlab.generate run=<MLflow run id> [key=value …]", "")],
        "rnnlab.generate: sample from a trained model, one sample per line.")



def inspect_help() -> str:
    return command_help("inspect", [
        ("python -m rnnlab.inspect checkpoint=<path.npz> [key=value …]", ""),
        ("python -m rnnlab.inspect run=<MLflow run id> [key=value …]", "the views also go to the run's artifacts")],
        "rnnlab.inspect: look inside a trained model: surprise per character, cells, gates, gradient flow.")
