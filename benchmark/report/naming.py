"""Names for settings of one method that a leaderboard shows side by side: by what differs between them.

Two cells of ``at_bsl`` with τ 1.0 and 1.5 are different settings (different cell keys); a page that tells
them apart by a config hash ("at_bsl [3f9a1c2e]") makes the reader open both configs. Here each is named
by the resolved fields that differ among the settings sharing its method label and model
(``at_bsl (τ=1.5)``, ``at (epochs=100, train steps=7)``), compared on what the cell key hashes (the
resolved config, without the training seed and the where-things-are fields). Settings that differ in no
such field keep their hash.
"""
from __future__ import annotations

import json
import math
import numbers
from typing import Any

# What the cell key leaves out (benchmark.cell's LOCATION_FIELDS, PACING_FIELDS, AS_WRITTEN_FIELDS and
# EVALUATION_FIELDS: the report reads only the store, so the names are repeated here and a test keeps them
# equal), plus the seed and the method label itself.
LOCATION_FIELDS = ("data_root", "download", "device", "plugins", "trackers")
PACING_FIELDS = ("checkpoint_every_s", "progress_every_s")
AS_WRITTEN_FIELDS = ("eps", "train_attack", "eval_attacks", "monitor_attack", "method_args", "milestones",
                     "select_from")
EVALUATION_FIELDS = ("eval_attack_specs", "eval_batch_size")
IGNORED = set(LOCATION_FIELDS + PACING_FIELDS + AS_WRITTEN_FIELDS + EVALUATION_FIELDS) | {"seed", "method"}
SYMBOLS = {"tau": "τ", "beta": "β", "alpha": "α", "gamma": "γ", "lambda": "λ", "lam": "λ", "kappa": "κ",
           "mu": "μ", "sigma": "σ", "rho": "ρ", "eps": "ε", "epsilon": "ε", "eps_value": "ε", "temperature": "T"}
PREFIXES = {"method_hparams.": "", "model_args.": "", "train_attack_spec.": "train ", "monitor_attack_spec.": "monitor "}
MAX_SHOWN = 3  # differences named in a label; more are counted


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists stay values. At the top, what the key leaves out is dropped
    (as benchmark.cell does: cuda_graphs when off, val_fraction unless selection is val_best)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and (key in IGNORED or (key == "cuda_graphs" and not value)
                           or (key == "val_fraction" and config.get("selection") != "val_best")):
            continue
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_name(key: str) -> str:
    """method_hparams.tau -> τ, train_attack_spec.steps -> train steps, eps_value -> ε, epochs -> epochs."""
    for prefix, shown in PREFIXES.items():
        if key.startswith(prefix):
            leaf = key[len(prefix):]
            return shown + SYMBOLS.get(leaf, leaf)
    return SYMBOLS.get(key, key)


def value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, numbers.Real):
        return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (numbers.Real, str)) for v in value):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def differing_fields(configs: dict[str, dict]) -> list[str]:
    """Dotted keys whose values are not the same in every config (a key missing somewhere differs)."""
    flat = {name: flatten(config or {}) for name, config in configs.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    return [k for k in keys if len({json.dumps(f.get(k, "<unset>"), sort_keys=True, default=str)
                                    for f in flat.values()}) > 1]


def setting_labels(base: str, configs: dict[str, dict]) -> dict[str, str]:
    """setting -> label for settings that share the label ``base``: ``base (field=value, ...)`` by the
    fields that differ among them; a value too long for a label (an attack list) is numbered as a
    variant instead; ``base [setting]`` when no field differs (the hash is then the only difference)."""
    if len(configs) < 2:
        return {name: base for name in configs}
    fields = differing_fields(configs)
    # a resolved method hyperparameter that differs names the setting; the same leaf elsewhere is a repeat
    flat = {name: flatten(config or {}) for name, config in configs.items()}
    names: dict[str, str] = {}
    for setting in configs:
        parts, seen = [], set()
        for key in fields:
            label = field_name(key)
            if label in seen:
                continue
            seen.add(label)
            value = flat[setting].get(key, None)
            text = value_text(value) if key in flat[setting] else "unset"
            if len(text) > 24:  # an attack list, a long string: which variant, not the value
                variants = list(dict.fromkeys(json.dumps(f.get(key), sort_keys=True, default=str)
                                              for f in flat.values()))
                text = f"variant {variants.index(json.dumps(value, sort_keys=True, default=str)) + 1}"
            parts.append(f"{label}={text}")
        if not parts:
            names[setting] = f"{base} [{setting}]"
            continue
        shown = parts[:MAX_SHOWN] + ([f"+{len(parts) - MAX_SHOWN} more"] if len(parts) > MAX_SHOWN else [])
        names[setting] = f"{base} ({', '.join(shown)})"
    if len(set(names.values())) < len(names):  # labels that still collide keep the hash too
        names = {s: f"{label} [{s}]" if list(names.values()).count(label) > 1 else label for s, label in names.items()}
    return names
