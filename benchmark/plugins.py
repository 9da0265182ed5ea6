"""User plugins: modules that register methods, models, datasets or attack kinds with the built-ins' decorators.

A plugin is a Python file (``--plugin my_methods.py``), an importable module (``--plugin mylab.methods``) or an
installed distribution's entry point in the group ``tailrobust.plugins`` (loaded in every process that loads
plugins; the entry point names a module, or a function that is called once to register). Loading is the
import: the module's ``@register_method(...)`` (``@register_model``, ``@register_dataset``,
``register_attack``) decorators run and add entries to the same registries the built-ins are in.

:func:`load_plugins` is the one entry point: the configuration calls it before it checks names against the
registries, and ``runner.run_cell`` calls it with the plan's ``plugins`` in whichever process runs the cell
(a spawned device worker, a Ray task, a Slurm job), so an executor needs nothing of its own. Loading the same
plugin twice in a process is a no-op.

Each entry a plugin adds is annotated in its registry with ``plugin = {"name": ..., "sha256": ...}``, the hash
of the plugin's source (the file, or every ``.py`` file of a plugin package). The configuration puts these
hashes into the cell key of every cell whose method, model, dataset or training/monitoring attack comes from a
plugin (``plugin_sources``), and an evaluation attack's hash goes into its evaluation key, so an edited plugin
never reuses results of the old code; cells of built-ins keep their keys.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from .errors import UsageError
from .registry import Registry, all_registries

ENTRY_POINT_GROUP = "tailrobust.plugins"


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin: its name, where it came from, the hash of its source, what it registered."""

    name: str
    source: str  # the file path, module name or entry point as given
    sha256: str
    module: str  # the module it was imported as
    registered: dict[str, list[str]] = field(default_factory=dict)  # registry noun ("method") -> names


_LOADED: dict[str, Plugin] = {}  # resolved spec (absolute path, module name, "entry point:<name>") -> plugin
_ENTRY_POINTS_LOADED = False


def _load_builtins() -> None:
    """Import every built-in registry first, so what a plugin adds is told apart from the built-ins."""
    import attacks  # noqa: F401
    import methods  # noqa: F401
    from .data import datasets  # noqa: F401
    from . import models  # noqa: F401


def load_plugins(specs: Iterable[str] = (), entry_points: bool = True) -> list[Plugin]:
    """Load each plugin of ``specs`` (file paths or module names) and, once per process, the installed
    ``tailrobust.plugins`` entry points; return the plugins of ``specs``. A plugin that cannot be found,
    fails on import or registers a name that is taken is a one-line UsageError."""
    global _ENTRY_POINTS_LOADED
    _load_builtins()
    if entry_points and not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_once(f"entry point:{point.name}", point.value, lambda point=point: _import_entry_point(point),
                       name=point.name)
    if isinstance(specs, str):
        specs = [specs]
    return [_load_spec(str(spec)) for spec in specs]


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec or Path(spec).is_file()


def _load_spec(spec: str) -> Plugin:
    if not spec.strip():
        raise UsageError("plugin: an empty name; give a .py file or an importable module")
    if _is_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"plugin {spec}: no such file")
        return _load_once(str(path), spec, lambda: _import_file(path), name=path.stem)
    if importlib.util.find_spec(spec.split(".")[0]) is None:
        raise UsageError(f"plugin {spec}: neither a file nor an importable module")
    return _load_once(spec, spec, lambda: importlib.import_module(spec), name=spec)


def resolve_spec(spec: str) -> str:
    """A plugin as a worker process can load it wherever it runs: a file as its absolute path, a module as named."""
    return str(Path(spec).expanduser().resolve()) if _is_path(spec) else spec


def _module_name(path: Path) -> str:
    return f"tailrobust_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def _import_file(path: Path) -> ModuleType:
    """Import a file as a module registered in sys.modules (dataclasses and pickling look modules up there)."""
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_entry_point(point) -> ModuleType:
    loaded = point.load()
    if callable(loaded) and not isinstance(loaded, ModuleType):
        loaded()  # a register() function
    return sys.modules[point.module]


def _load_once(key: str, source: str, do_import, name: str) -> Plugin:
    if key in _LOADED:
        return _LOADED[key]
    taken = {p.name: p for p in _LOADED.values()}
    if name in taken:
        raise UsageError(f"plugin {source}: another plugin is named {name!r} ({taken[name].source}); rename one")
    before = {id(registry): set(registry.list()) for registry in all_registries()}
    try:
        module = do_import()
    except UsageError as err:
        raise UsageError(f"plugin {source}: {err}") from None
    except ValueError as err:  # Registry: a name registered twice
        raise UsageError(f"plugin {source}: {str(err).splitlines()[0]}") from None
    except Exception as err:
        raise UsageError(f"plugin {source} failed to load: {type(err).__name__}: {_first_line(err)}"
                         f"{_where(err, source)}") from None
    digest = source_hash(module)
    added: dict[str, list[str]] = {}
    for registry in all_registries():
        new = sorted(set(registry.list()) - before.get(id(registry), set()))
        for entry in new:
            registry.annotate(entry, plugin={"name": name, "sha256": digest})
        if new:
            added.setdefault(registry.what, []).extend(new)
    plugin = Plugin(name=name, source=source, sha256=digest, module=module.__name__, registered=added)
    _LOADED[key] = plugin
    return plugin


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0]


def _where(err: Exception, source: str) -> str:
    """" (my_plugin.py line 12)" for the deepest frame of the plugin's own file, when there is one."""
    tb, found = err.__traceback__, None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).name == Path(source).name:
            found = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {found})" if found else ""


def source_hash(module: ModuleType) -> str:
    """sha256 of a module's source: its file, or for a package every .py file under it (by relative path)."""
    file = getattr(module, "__file__", None)
    if not file:
        return hashlib.sha256(module.__name__.encode()).hexdigest()
    path = Path(file)
    digest = hashlib.sha256()
    if path.name == "__init__.py":
        for part in sorted(path.parent.rglob("*.py")):
            digest.update(str(part.relative_to(path.parent)).encode() + b"\0" + part.read_bytes() + b"\0")
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def plugin_of(registry: Registry, name: str) -> dict | None:
    """``{"name", "sha256"}`` of the plugin that registered ``name`` in ``registry``; None for a built-in."""
    return registry.metadata(name).get("plugin") if name in registry else None


def loaded_plugins() -> list[Plugin]:
    return list(_LOADED.values())


def unload_plugins() -> None:
    """Remove every entry plugins registered and forget the plugins (a notebook reloading an edited plugin,
    tests); entry points load again at the next ``load_plugins``."""
    global _ENTRY_POINTS_LOADED
    for registry in all_registries():
        for entry in registry.list():
            if registry.metadata(entry).get("plugin"):
                registry.unregister(entry)
    for plugin in _LOADED.values():
        sys.modules.pop(plugin.module, None)
    _LOADED.clear()
    _ENTRY_POINTS_LOADED = False
