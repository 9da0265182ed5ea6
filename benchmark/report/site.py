"""The static site: ``index.html`` (one section per leaderboard), a page per cell, PNG figures and table
exports, all self-contained (inline CSS/JS, no network).

The site is built in a temporary folder beside the target and swapped in only when complete, so a
crash or a bad input never leaves a half-written site where a good one was. The same results give
byte-identical files, so rebuilding is safe and diffs show real changes only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import jinja2
import yaml

from ..errors import UsageError
from ..store import STORE_SCHEMA_VERSION, UNREADABLE, CellRecord, ResultStore, load_results
from . import plots
from .audit_text import audit_table
from .paper import compact_table, head_tail_tables
from .exports import write_exports
from .tables import (Group, Table, attack_label, attack_labels, attack_specs, attacks_in, cascade_table,
                     cell_class_table, confusion_table, default_attack, describe_spec, groups_of, key_value_table,
                     leaderboard, load_reference, per_class_table, record_labels, reference_differences,
                     reference_table, setting_rows, slugify)

MANIFEST = "report.json"  # marks a folder as a report this tool may replace
GENERATOR = "tailrobust report"
HTML_CONFUSION_MAX_CLASSES = 20  # above this a confusion matrix is drawn as an image instead of a table
TEMPLATES = Path(__file__).with_name("templates")


def build_report(results: str | Path, out: str | Path, attack: str | None = None, tail_only: bool = False,
                 poster: bool | None = None) -> Path:
    """Build the site for the cells under ``results`` into ``out``; return the path of index.html.
    ``poster``: show the TAET poster's paper-reported CIFAR-10-LT block beside every leaderboard (True),
    on none (False), or (None, the default) only beside leaderboards of the poster's dataset."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise UsageError(f"results folder {results} does not exist or is not a folder")
    _check_replaceable(out)
    store = load_results(results)
    unreadable = [path for path, reason in store.skipped if reason == UNREADABLE]
    if store.empty and unreadable:  # not an empty page with exit 0: the cells are there, this user cannot read them
        raise UsageError(f"no readable cell under {results}: {len(unreadable)} of {len(store.skipped)} folders are "
                         f"{UNREADABLE} (first: {unreadable[0]}); ask their owner to make them group-readable")
    if attack is not None and not store.empty and attack not in set(store.cells["attack"]):
        known = ", ".join(attacks_in(store.cells))
        raise UsageError(f"attack {attack!r} is in no cell under {results}; evaluated attacks: {known}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-"))
    except OSError as err:
        raise UsageError(f"cannot build the report beside {out}: {err}") from None
    try:
        build.chmod(0o755)
        _render(store, build, results, attack, tail_only, poster)
        _keep_hidden_files(out, build)
        _swap(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return out / "index.html"


# ----------------------------------------------------------------------------- the swap

def _check_replaceable(out: Path) -> None:
    """Only an empty folder, a folder of dotfiles (.gitkeep) or an earlier report may be replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        raise UsageError(f"--out {out} holds other files and no {MANIFEST} of an earlier report; "
                         "refusing to replace it (choose an empty or new folder)")


def _keep_hidden_files(old: Path, new: Path) -> None:
    """Carry top-level dotfiles (a tracked .gitkeep) over to the new site."""
    if old.is_dir():
        for item in old.iterdir():
            if item.name.startswith(".") and item.is_file() and not (new / item.name).exists():
                shutil.copy2(item, new / item.name)


def _swap(build: Path, out: Path) -> None:
    if not out.exists():
        os.rename(build, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(build, out)
    except OSError:
        os.rename(old, out)  # put the good site back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale(out: Path) -> None:
    """Old sites left behind by a build that died between its two renames."""
    for stale in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------- rendering

def environment() -> jinja2.Environment:
    # autoescape everywhere: method names, class names and audit flags come from result files
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["attack_label"] = attack_label  # name | attack_label(labels)
    env.filters["describe_spec"] = describe_spec
    return env


class _Site:
    """Paths and writers of one build."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("img", "tables", "cells"):
            (root / sub).mkdir()
        self.exports: dict[str, dict[str, str]] = {}

    def export(self, table: Table, prefix: str = "") -> dict[str, str]:
        names = write_exports(table, self.root / "tables")
        links = {fmt: f"{prefix}tables/{name}" for fmt, name in names.items()}
        self.exports[table.slug] = {fmt: f"tables/{name}" for fmt, name in names.items()}
        return links

    def img(self, name: str) -> Path:
        return self.root / "img" / name


def _cell_pages(store: ResultStore) -> dict[str, str]:
    pages, used = {}, set()
    for key in store.records:
        slug, n = slugify(key), 1
        while slug.lower() in used:
            n += 1
            slug = f"{slugify(key)}-{n}"
        used.add(slug.lower())
        pages[key] = f"cells/{slug}.html"
    return pages


def poster_applies(group: Group, reference: dict, poster: bool | None) -> bool:
    """Whether a leaderboard shows the poster's block: asked for (True) or not (False), else only when the
    leaderboard's dataset is the poster's (CIFAR-10): beside MNIST or a user's own data it is noise."""
    return poster if poster is not None else group.dataset == reference["setting"]["dataset"]


def _render(store: ResultStore, root: Path, results: Path, attack: str | None, tail_only: bool,
            poster: bool | None = None) -> None:
    env, site = environment(), _Site(root)
    pages = _cell_pages(store)
    specs = attack_specs(store)
    reference = load_reference()
    groups = groups_of(store.cells)
    shown = [poster_applies(g, reference, poster) for g in groups]
    ref_table = reference_table(reference) if any(shown) else None
    ref_links = site.export(ref_table) if ref_table is not None else {}
    colors = plots.method_colors(store.cells["method_label"]) if not store.empty else {}
    sections = [_group_section(store, site, group, attack, tail_only, pages, specs, reference, colors, show)
                for group, show in zip(groups, shown)]
    with_poster = [i for i, s in enumerate(sections) if s["poster"]]
    if with_poster:  # the paper's block once, in full, beside the measured table closest to its setting
        closest = min(with_poster, key=lambda i: len(sections[i]["differences"]))
        sections[closest]["reference_full"] = True
    ir_figures = _ir_figures(store, site, colors)
    for key, page in pages.items():
        _cell_page(env, store, site, key, page, attack, specs)
    finished = sorted(r.finished_at for r in store.records.values())
    cells = [{"key": k, "href": pages[k], "label": _row_label(store.record(k))} for k in sorted(pages)]
    skipped = [{"path": _relative(path, results), "reason": reason} for path, reason in store.skipped]
    context = {"title": "tailrobust report", "results": str(results), "n_cells": len(store.records),
               "reference": ref_table, "reference_exports": ref_links,
               "skipped": skipped, "sections": sections, "ir_figures": ir_figures, "cells": cells,
               "latest": finished[-1] if finished else None, "tail_only": tail_only, "attack": attack,
               "store_schema": STORE_SCHEMA_VERSION}
    (root / "index.html").write_text(env.get_template("index.html.j2").render(**context), encoding="utf-8")
    manifest = {"generator": GENERATOR, "store_schema_version": STORE_SCHEMA_VERSION, "results": str(results),
                "cells": sorted(store.records), "skipped": skipped, "attack": attack, "tail_only": tail_only,
                "poster": poster,
                "tables": site.exports}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _row_label(record: CellRecord) -> str:
    seed = record.seeds.get("training", "?")
    return f"{record.method_label} · {record.data['dataset']} · IR {record.data['imbalance_ratio']:g} · seed {seed}"


def _group_section(store, site, group: Group, attack, tail_only, pages, specs, reference, colors,
                   poster: bool = True) -> dict:
    cells = group.select(store.cells)
    rows = setting_rows(cells, store)
    labels = {r.setting: r.label for r in rows}
    chosen = attack if attack is not None else default_attack(attacks_in(cells), specs)
    chosen_label = attack_label(chosen, attack_labels(store, list(dict.fromkeys(cells["cell_key"])))) \
        if chosen else None
    board = leaderboard(store, group, pages)
    per_class = per_class_table(store, group, chosen, tail_only, rows)
    paper_tables = [("compact leaderboard", compact_table(store, group, rows))]
    paper_tables += [(f"per-class, {t.slug.rsplit('-', 1)[1]} classes", t)
                     for t in head_tail_tables(store, group, chosen, rows)]
    figures = []
    if chosen:
        path = plots.per_class_bars(group.select(store.classes), labels, chosen,
                                    site.img(f"{group.slug}-per-class-{slugify(chosen)}.png"), colors, chosen_label)
        figures.append({"src": f"img/{path.name}",
                        "caption": f"Per-class recall under {chosen_label} (mean over seeds)."})
    path = plots.clean_vs_robust(cells, labels, site.img(f"{group.slug}-clean-vs-robust.png"), colors)
    figures.append({"src": f"img/{path.name}", "caption": "Balanced accuracy (clean) against Balanced Robustness "
                                                         "under the worst case, one point per seed."})
    first = store.record(rows[0].cell_keys[0])
    path = plots.class_counts(first.classes, first.train_counts, site.img(f"{group.slug}-class-counts.png"))
    figures.append({"src": f"img/{path.name}",
                    "caption": f"Training images per class ({first.data.get('train_size', '?')} in all)."})
    return {"group": group, "anchor": group.slug, "leaderboard": board, "leaderboard_exports": site.export(board),
            "per_class": per_class, "per_class_exports": site.export(per_class), "attack": chosen,
            "attack_label": chosen_label,
            "reference_full": False, "figures": figures, "poster": poster,
            "paper_exports": [(name, site.export(t)) for name, t in paper_tables],
            "differences": reference_differences(reference, store, group, chosen, tail_only) if poster else []}


def _ir_figures(store: ResultStore, site: _Site, colors: dict[str, str]) -> list[dict]:
    """BR against IR per (dataset, threat model, test split) that has more than one IR."""
    out = []
    if store.cells.empty:
        return out
    keys = ["dataset", "norm", "eps_label", "test_split"]
    for (dataset, norm, eps, split), cells in store.cells.groupby(keys, sort=True):
        if cells["imbalance_ratio"].nunique() < 2:
            continue
        name = slugify(f"{dataset}-{norm}-eps{eps}-{split}-br-vs-ir.png")
        plots.br_vs_ir(cells, site.img(name), colors)
        out.append({"src": f"img/{name}", "caption": f"{dataset} · ε = {eps} · {split} test split: Balanced "
                                                      "Robustness under the worst case against imbalance ratio "
                                                      "(mean ± std over seeds)."})
    return out


def _cell_page(env, store: ResultStore, site: _Site, key: str, page: str, attack: str | None, specs) -> None:
    record = store.record(key)
    slug = Path(page).stem
    names = record.classes
    attacks = list(record.attacks)
    chosen = attack if attack in attacks else default_attack(attacks, specs) or "clean"
    labels = record_labels(record.attack_records)
    class_table = cell_class_table(store, key, slug)
    log = store.log(key)
    figures = []
    for fig, caption in (
            (plots.training_curves(log, site.img(f"cell-{slug}-training.png")),
             "Training loss, training accuracy and the overall monitoring accuracies per epoch (monitoring: a "
             "fixed class-stratified test subset, never used to choose a model)."),
            (plots.monitor_per_class(log, names, site.img(f"cell-{slug}-monitor-per-class.png")),
             "Robust monitoring recall per class over epochs.")):
        if fig is not None:
            figures.append({"src": f"../img/{fig.name}", "caption": caption})
    confusion, confusion_img = None, None
    matrix = record.confusion_matrix(chosen)
    if matrix and len(names) > HTML_CONFUSION_MAX_CLASSES:
        path = plots.confusion_heatmap(matrix, names, f"confusion under {attack_label(chosen, labels)}",
                                       site.img(f"cell-{slug}-confusion.png"))
        confusion_img = f"../img/{path.name}"
    elif matrix:
        confusion = confusion_table(store, key, chosen, slug)
    tables = {"classes": class_table, "confusion": confusion,
              "cost": key_value_table(f"cell-{slug}-cost", "Cost", record.cost),
              "audit": audit_table(f"cell-{slug}-audit", record.audit, labels, names),
              "method_diagnostics": key_value_table(f"cell-{slug}-method-diagnostics", "Method diagnostics",
                                                    record.method_diagnostics)
              if record.method_diagnostics else None}  # TAET: how long its clean stage really learned
    cascades = [t for t in (cascade_table(record, name, f"cell-{slug}") for name in record.attack_records)
                if t is not None]
    exports = {name: site.export(t, prefix="../") for name, t in tables.items() if t is not None}
    cascades = [(t, site.export(t, prefix="../")) for t in cascades]
    extra = {"model_selection": record.model_selection} if record.model_selection is not None else {}
    context = {"title": f"cell {key}", "key": key, "record": record, "tables": tables, "exports": exports,
               "figures": figures, "confusion_img": confusion_img, "attack": chosen, "labels": labels,
               "cascades": cascades,
               "flags": record.flags,
               "config_yaml": yaml.safe_dump(record.config, sort_keys=False),
               "extra_yaml": yaml.safe_dump(extra, sort_keys=False) if extra else None,
               "attack_records": record.attack_records}
    html = env.get_template("cell.html.j2").render(**context)
    (site.root / page).write_text(html, encoding="utf-8")
