"""The live set of model versions: the folder scan, routing (aliases, weights) and reload.

What a request sees is one immutable :class:`Snapshot` (name -> version -> ServedModel,
plus the routing and the repository index). A rescan builds the next snapshot off to the
side, loading and fully validating every new or changed file in a worker thread with
:func:`nnlib.load`, and then swaps it in with one assignment on the event loop: a request
sees the old set or the new one, never half of each.

A file is identified by (path, size, mtime_ns, inode): an unchanged file is not loaded
again. A file that fails (corrupt, half-copied, hostile) keeps the version that was loaded
from that path serving, is recorded with its reason (the index, one log line, a metric) and
is retried at every scan. A version that leaves the set stops getting new requests at once;
it is reported as UNLOADING until the requests running on it have finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

import nnlib
from app import metrics
from app.errors import InvalidInputError, ModelNotFoundError, NotReadyError
from app.log import escape
from app.registry import MODEL_NAME, Registry, ServedModel

# The load lines keep the logger of the start-up registry: operators grep one name.
logger = logging.getLogger("nnserve.registry")

ROUTING_FILE = "routing.toml"
MAX_ROUTING_BYTES = 64 * 1024
# A scan looks at this many artifact files at most: a folder flooded with files must not
# cost unbounded time and memory at every poll.
MAX_FILES = 1024
UNLOADED_FILE = "unloaded.json"

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_ROUTING_KEYS = frozenset({"default", "aliases", "weights"})


def version_key(version: str) -> tuple:
    """Sort key of a version: dotted integers numerically, then any other string by text.

    ``"1" < "1.2" < "1.10" < "2" < "10" < "2026-beta" < "rc"``: a version made of decimal
    integers joined by dots compares part by part as numbers; every other version sorts
    after all of those, in code-point order.
    """
    parts = version.split(".")
    if all(part.isascii() and part.isdigit() for part in parts):
        return (0, tuple(int(part) for part in parts), version)
    return (1, (), version)


def stable_fraction(key: str) -> float:
    """Map a routing key onto [0, 1) the same way in every process and run.

    .. math:: u = \\operatorname{int}(\\mathrm{blake2b}_{64}(key)) / 2^{64}

    Python's ``hash`` is salted per process, so two workers (or a restart) would send the
    same key to different versions.
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (the Triton/MLServer model-repository extension)."""

    name: str
    version: str
    state: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state,
                "reason": self.reason}


@dataclass(frozen=True)
class ModelRouting:
    """Which version answers a model's requests: default, aliases and traffic weights.

    ``weights`` are (version, weight > 0) in version order; an unversioned request lands on
    the version whose interval of the cumulative weights holds ``u * total``, with ``u``
    the routing key's :func:`stable_fraction` or a random number without a key.
    """

    default: str
    aliases: dict[str, str] = field(default_factory=dict)
    weights: tuple[tuple[str, float], ...] = ()

    def pick(self, routing_key: str | None, rng: random.Random) -> str:
        """Return the version an unversioned request goes to."""
        if not self.weights:
            return self.default
        total = sum(weight for _, weight in self.weights)
        point = (stable_fraction(routing_key) if routing_key is not None
                 else rng.random()) * total
        reached = 0.0
        for version, weight in self.weights:
            reached += weight
            if point < reached:
                return version
        return self.weights[-1][0]  # rounding at the very top of the last interval


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything a request needs to find its model, never changed once built."""

    versions: dict[str, dict[str, ServedModel]]  # name -> version -> model, in version order
    routing: dict[str, ModelRouting]
    registry: Registry  # every model at its default version, the name-level view
    entries: tuple[IndexEntry, ...] = ()
    routing_error: str | None = None
    scanned_at: float | None = None  # Unix time the scan that built it started

    @classmethod
    def build(cls, models: Iterable[ServedModel], routing: dict[str, ModelRouting] | None = None,
              default_model: str | None = None, entries: Iterable[IndexEntry] = (),
              routing_error: str | None = None) -> Snapshot:
        """Group ``models`` by name and version and fill in the routing they lack."""
        versions: dict[str, dict[str, ServedModel]] = {}
        for model in models:
            versions.setdefault(model.name, {})[model.version] = model
        versions = {name: dict(sorted(found.items(), key=lambda item: version_key(item[0])))
                    for name, found in sorted(versions.items())}
        routing = {name: (routing or {}).get(name) or ModelRouting(default=next(reversed(found)))
                   for name, found in versions.items()}
        registry = Registry([found[routing[name].default] for name, found in versions.items()],
                            default=default_model)
        return cls(versions, routing, registry, tuple(entries), routing_error)

    def resolve(self, name: str | None, version: str | None, routing_key: str | None,
                rng: random.Random) -> ServedModel:
        """Return the model a request for ``name`` at ``version`` (or alias) gets."""
        if name is None:
            name = self.registry.default
            if name is None:
                raise NotReadyError("no model is loaded")
        found = self.versions.get(name)
        if found is None:
            raise ModelNotFoundError(escape(str(name)), self.versions)
        routing = self.routing[name]
        if version is None:
            return found[routing.pick(routing_key, rng)]
        model = found.get(version) or found.get(routing.aliases.get(version, ""))
        if model is None:
            known = [*found, *(f"{alias} (alias of {target})"
                               for alias, target in routing.aliases.items())]
            raise ModelNotFoundError(name, version=escape(str(version), 80), versions=known)
        return model


@dataclass
class _FileRecord:
    """What the last scans made of one file of the folder."""

    key: tuple[int, int, int]  # size, mtime_ns, inode
    model: ServedModel | None  # loaded from the file as it is now, or None
    error: str | None  # why the file as it is now does not load
    last_good: ServedModel | None  # the last model this path gave, kept serving on a failure


def _guess_name(relative: str) -> str:
    """A name for a file that did not load (metric label, index row): its folder or stem."""
    parts = relative.split("/")
    guess = parts[0] if len(parts) > 1 else parts[-1].removesuffix(".joblib")
    return guess if MODEL_NAME.fullmatch(guess) else "unknown"


class Repository:
    """The model folder, scanned into :class:`Snapshot` s; ``snapshot`` is what serves.

    Scans run one at a time (a lock); the snapshot they build is installed on the event
    loop, where the in-flight counters of :meth:`acquire`/:meth:`release` live too.
    """

    def __init__(self, folder: Path | None, default_model: str | None = None,
                 control_dir: Path | None = None, registry: Registry | None = None) -> None:
        self.folder = folder
        self.default_model = default_model
        # Shared by the workers of one server (the launcher makes it): the unloaded names.
        self.control_dir = control_dir
        models = list(registry) if registry is not None else []
        self.snapshot = Snapshot.build(models, default_model=registry.default if registry
                                       else default_model)
        self.rng = random.Random()
        self._files: dict[str, _FileRecord] = {}
        self._unloaded: set[str] = set()
        self._routing_good: dict | None = None  # last routing file that validated (parsed)
        self._routing_logged: str | None = None
        self._loading: dict[str, str] = {}  # relative path -> guessed name, during a scan
        self._previous_keys: dict[str, tuple] = {}  # each file's key at the last scan
        self._was_empty = False
        self._scan_lock = threading.Lock()
        self.inflight: dict[int, int] = {}
        self.retiring: dict[int, ServedModel] = {}

    # -- requests ----------------------------------------------------------------------

    def resolve(self, name: str | None, version: str | None = None,
                routing_key: str | None = None) -> ServedModel:
        """Return the model for a request (see :meth:`Snapshot.resolve`)."""
        return self.snapshot.resolve(name, version, routing_key, self.rng)

    def acquire(self, model: ServedModel) -> None:
        """Count a request running on ``model`` (event loop only)."""
        key = id(model)
        self.inflight[key] = self.inflight.get(key, 0) + 1

    def release(self, model: ServedModel) -> None:
        """End a request on ``model``; a retired version with none left is unloaded."""
        key = id(model)
        left = self.inflight.get(key, 1) - 1
        if left > 0:
            self.inflight[key] = left
            return
        self.inflight.pop(key, None)
        if self.retiring.pop(key, None) is not None:
            logger.info("unloaded model %s version %s: its last request finished",
                        model.name, escape(model.version))

    # -- scanning ----------------------------------------------------------------------

    def _list(self) -> list[str]:
        """Relative paths of the artifacts: ``*.joblib`` and ``<folder>/*.joblib``, sorted."""
        if self.folder is None:
            return []
        try:
            top = sorted(os.scandir(self.folder), key=lambda entry: entry.name)
        except FileNotFoundError:
            logger.error("model folder %s does not exist; no model is served", self.folder)
            return []
        except NotADirectoryError:
            logger.error("model folder %s is not a directory; no model is served", self.folder)
            return []
        except OSError as exc:
            logger.error("cannot list model folder %s (%s)", self.folder, exc.strerror or exc)
            return []
        found = []
        for entry in top:
            if entry.name.startswith("."):
                continue  # editors' and copy tools' temporary files
            # Every *.joblib name is tried, whatever it is (a link, a FIFO, a folder):
            # nnlib.load refuses what is not a regular file and says why.
            if entry.name.endswith(".joblib"):
                found.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                try:
                    found += sorted(f"{entry.name}/{inner.name}" for inner in
                                    os.scandir(entry.path) if inner.name.endswith(".joblib")
                                    and not inner.name.startswith("."))
                except OSError:
                    continue
        if len(found) > MAX_FILES:
            logger.error("the model folder holds %d artifacts; only the first %d are read",
                         len(found), MAX_FILES)
        return found[:MAX_FILES]

    def _load(self, relative: str, key: tuple, old: _FileRecord | None,
              retry: bool) -> _FileRecord:
        """Load one file, or reuse what the last scan made of it when it has not changed."""
        if old is not None and old.key == key and (old.error is None or not retry):
            return old
        last_good = old.model or old.last_good if old is not None else None
        self._loading[relative] = last_good.name if last_good else _guess_name(relative)
        start = time.perf_counter()
        try:
            model = ServedModel.from_artifact(nnlib.load(self.folder / relative))
            error = None
        except ValueError as exc:  # ArtifactError names the file and the reason
            model, error = None, str(exc)
        except Exception as exc:  # a loader bug: still only this file
            logger.exception("the loader failed on %s", escape(relative))
            model, error = None, f"the loader failed ({type(exc).__name__})"
        finally:
            del self._loading[relative]
        label = model.name if model else (last_good.name if last_good else _guess_name(relative))
        if model is not None:
            metrics.model_reload(label, True, time.perf_counter() - start, model.version)
            logger.info("loaded model %s version %s from %s (input %s, %d classes, %s)",
                        model.name, escape(model.version), escape(relative),
                        list(model.input_shape), model.n_classes, model.output)
        else:
            error = escape(error, 300)
            # Logged once per change of the file, not at every poll that retries it.
            if old is None or old.key != key or old.error != error:
                metrics.model_reload(label, False, time.perf_counter() - start)
                keeps = (f"; version {escape(last_good.version)} of {last_good.name} keeps "
                         "serving" if last_good else "")
                logger.error("skipping %s: %s%s", escape(relative), error, keeps)
        return _FileRecord(key, model, error, model or last_good)

    def build(self, retry: bool = True,
              stop: Callable[[], bool] = lambda: False) -> Snapshot | None:
        """Scan the folder and return the next snapshot (worker thread; not installed).

        ``retry`` loads again the files that failed even when they have not changed.
        ``stop()`` is asked before each file: once it is true (SIGTERM) the scan ends and
        returns None, so a half-read folder never replaces what serves while draining.
        """
        with self._scan_lock:
            started = time.time()  # what this scan sees is the folder from now on
            self._read_unloaded()
            records: dict[str, _FileRecord] = {}
            listed = self._list()
            for done, relative in enumerate(listed):
                if stop():
                    logger.warning("stopping: %d model file(s) left unloaded; the scan is "
                                   "abandoned", len(listed) - done)
                    return None
                try:
                    info = os.stat(self.folder / relative)
                    key = (info.st_size, info.st_mtime_ns, info.st_ino)
                except OSError:  # a dangling link, or removed meanwhile: the load says which
                    key = (-1, -1, -1)
                records[relative] = self._load(relative, key, self._files.get(relative), retry)
            self._files = records
            models: list[ServedModel] = []
            entries: list[IndexEntry] = []
            origin: dict[tuple[str, str], str] = {}
            for relative, record in records.items():
                model = record.last_good
                if model is not None and (model.name, model.version) in origin:
                    first = origin[model.name, model.version]
                    reason = (f"{relative}: version {model.version} of {model.name} is already "
                              f"loaded from {first}")
                    if record.error is None:
                        entries.append(IndexEntry(model.name, model.version, UNAVAILABLE, reason))
                        if self._previous_keys.get(relative) != record.key:  # once per change
                            logger.error("skipping %s", escape(reason))
                            metrics.model_reload(model.name, False, 0.0)
                    continue
                if model is None:
                    entries.append(IndexEntry(_guess_name(relative), "", UNAVAILABLE,
                                              f"{relative}: {record.error}"))
                    continue
                origin[model.name, model.version] = relative
                if model.name in self._unloaded:
                    entries.append(IndexEntry(model.name, model.version, UNAVAILABLE,
                                              "unloaded through the repository API"))
                    continue
                reason = (f"{relative} failed to load ({record.error}); the last good load "
                          "serves" if record.error else "")
                entries.append(IndexEntry(model.name, model.version, READY, reason))
                models.append(model)
            self._previous_keys = {relative: rec.key for relative, rec in records.items()}
            if not models and not self._was_empty:  # logged once, not at every poll
                logger.error("no model could be loaded from %s", self.folder)
            self._was_empty = not models
            routing, routing_error = self._routing(models)
            entries.sort(key=lambda e: (e.name, version_key(e.version)))
            snapshot = Snapshot.build(models, routing, self.default_model, entries,
                                      routing_error)
            return dataclasses.replace(snapshot, scanned_at=started)

    # -- routing -----------------------------------------------------------------------

    def _routing(self, models: list[ServedModel]) -> tuple[dict[str, ModelRouting], str | None]:
        """Read the routing file against ``models``; an invalid file keeps the last good one.

        Returns the routing of every model it can apply to, and why the file was refused.
        """
        versions: dict[str, set[str]] = {}
        for model in models:
            versions.setdefault(model.name, set()).add(model.version)
        error = None
        raw = None
        path = self.folder / ROUTING_FILE if self.folder is not None else None
        try:
            if path is not None and path.is_file():
                if path.stat().st_size > MAX_ROUTING_BYTES:
                    raise ValueError(f"it is larger than {MAX_ROUTING_BYTES} bytes")
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                raw = {}
            routing = parse_routing(raw, versions, self._unloaded)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            error = f"{ROUTING_FILE} refused: {escape(str(exc), 300)}; the last good routing stays"
            routing = {}
            for name, section in (self._routing_good or {}).items():
                try:  # the parts of the last good file that still name loaded versions
                    routing.update(parse_routing({name: section}, versions, self._unloaded))
                except ValueError:
                    continue
        else:
            # The sections of unloaded models were not checked: their last good ones stay.
            previous = self._routing_good or {}
            self._routing_good = {**{name: previous[name] for name in self._unloaded
                                     if name in previous},
                                  **{name: section for name, section in raw.items()
                                     if name not in self._unloaded}}
        if error != self._routing_logged:
            if error:
                logger.error("%s", error)
                metrics.ROUTING_REFUSED.inc()
            elif raw:
                logger.info("routing from %s: %s", ROUTING_FILE, escape(json.dumps(raw), 300))
            self._routing_logged = error
        return routing, error

    # -- installing --------------------------------------------------------------------

    def install(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` from now on, and log what changed (event loop)."""
        before = {(m.name, m.version): m for found in self.snapshot.versions.values()
                  for m in found.values()}
        after = {(m.name, m.version): m for found in snapshot.versions.values()
                 for m in found.values()}
        self.snapshot = snapshot  # the one assignment every request reads
        for key, model in after.items():
            old = before.get(key)
            if old is not None and old is not model:
                logger.info("replaced model %s version %s with its new load", model.name,
                            escape(model.version))
                self._retire(old)
        for key, model in before.items():
            if key not in after:
                self._retire(model)
        if snapshot.scanned_at is not None:
            metrics.scanned(len(snapshot.registry), snapshot.scanned_at)

    def _retire(self, model: ServedModel) -> None:
        running = self.inflight.get(id(model), 0)
        if running:
            self.retiring[id(model)] = model
            logger.info("unloading model %s version %s after its %d running request(s)",
                        model.name, escape(model.version), running)
        else:
            logger.info("unloaded model %s version %s", model.name, escape(model.version))

    # -- the repository API ------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every version found: READY, UNAVAILABLE (with the reason), LOADING, UNLOADING."""
        entries = list(self.snapshot.entries)
        entries += [IndexEntry(model.name, model.version, UNLOADING,
                               "waiting for its running requests")
                    for model in list(self.retiring.values())]
        entries += [IndexEntry(name, "", LOADING, f"{relative} is being loaded")
                    for relative, name in list(self._loading.items())]
        return [entry.as_dict() for entry in entries if not ready_only or entry.state == READY]

    def known_names(self) -> set[str]:
        """Names of every model a file of the folder gave (loaded now or before)."""
        return {record.last_good.name for record in self._files.values()
                if record.last_good is not None}

    def check_loaded(self, name: str) -> None:
        """Raise unless ``name`` serves now: why its files failed, or that none holds it."""
        if name in self.snapshot.versions:
            return
        reasons = [entry.reason for entry in self.snapshot.entries
                   if entry.name == name and entry.state == UNAVAILABLE]
        if reasons:
            raise InvalidInputError(f"model {name!r} failed to load: " + "; ".join(reasons))
        raise ModelNotFoundError(name, self.known_names())

    def set_unloaded(self, name: str, unloaded: bool) -> None:
        """Stop serving ``name`` from the next scan on, or serve it again."""
        with self._scan_lock:
            self._read_unloaded()
            (self._unloaded.add if unloaded else self._unloaded.discard)(name)
            if self.control_dir is not None:
                target = self.control_dir / UNLOADED_FILE
                temporary = target.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(json.dumps(sorted(self._unloaded)))
                os.replace(temporary, target)  # atomic: another worker reads all or nothing

    def _read_unloaded(self) -> None:
        if self.control_dir is None:
            return
        try:
            names = json.loads((self.control_dir / UNLOADED_FILE).read_text())
        except (OSError, ValueError):
            return
        if isinstance(names, list):
            self._unloaded = {name for name in names if isinstance(name, str)}


def parse_routing(raw: dict, versions: dict[str, set[str]],
                  ignored: set[str] = frozenset()) -> dict[str, ModelRouting]:
    """Check a parsed routing file against the loaded versions; raise ValueError if wrong.

    ``raw`` maps a model name to a table of ``default`` (a version or alias), ``aliases``
    (alias -> version) and ``weights`` (version or alias -> weight >= 0, positive sum).
    Sections of ``ignored`` models (unloaded through the API) are skipped.
    """
    routing: dict[str, ModelRouting] = {}
    for name, section in raw.items():
        if not isinstance(section, dict):
            raise ValueError(f"{escape(name, 80)!r} must be a table of default, aliases and "
                             "weights")
        if name in ignored:
            continue
        if name not in versions:
            raise ValueError(f"model {escape(name, 80)!r} is not loaded")
        routing[name] = _parse_section(name, section, versions[name])
    return routing


def _parse_section(name: str, section: dict, loaded: set[str]) -> ModelRouting:
    """Check one model's table of the routing file (see :func:`parse_routing`)."""
    unknown = sorted(set(section) - _ROUTING_KEYS)
    if unknown:
        raise ValueError(f"[{name}] has unknown keys {[escape(k, 40) for k in unknown]}; "
                         f"known: {sorted(_ROUTING_KEYS)}")
    aliases = section.get("aliases", {})
    if not isinstance(aliases, dict):
        raise ValueError(f"[{name}].aliases must be a table alias = \"version\"")
    for alias, target in aliases.items():
        if not MODEL_NAME.fullmatch(alias) or alias in loaded:
            raise ValueError(f"[{name}].aliases: {escape(alias, 40)!r} must be 1-64 letters, "
                             "digits, '.', '_' or '-' and not a version of the model")
        if not isinstance(target, str) or target not in loaded:
            raise ValueError(f"[{name}].aliases.{alias} names version "
                             f"{escape(str(target), 40)!r}, which is not loaded (loaded: "
                             f"{', '.join(sorted(loaded, key=version_key))})")

    def version_of(value: object, where: str) -> str:
        if isinstance(value, str) and value in loaded:
            return value
        if isinstance(value, str) and value in aliases:
            return aliases[value]
        raise ValueError(f"[{name}].{where} names {escape(str(value), 40)!r}, which is "
                         "neither a loaded version ("
                         f"{', '.join(sorted(loaded, key=version_key))}) nor an alias")

    default = (version_of(section["default"], "default") if "default" in section
               else max(loaded, key=version_key))
    weights = section.get("weights", {})
    if not isinstance(weights, dict):
        raise ValueError(f"[{name}].weights must be a table \"version\" = weight")
    merged: dict[str, float] = {}
    for key, weight in weights.items():
        version = version_of(key, f"weights.{key}")
        if (isinstance(weight, bool) or not isinstance(weight, int | float)
                or not math.isfinite(weight) or weight < 0):
            raise ValueError(f"[{name}].weights.{key} must be a finite number >= 0")
        merged[version] = merged.get(version, 0.0) + float(weight)
    if weights and not sum(merged.values()) > 0:
        raise ValueError(f"[{name}].weights must sum to a positive number")
    ordered = tuple(sorted(((v, w) for v, w in merged.items() if w > 0),
                           key=lambda item: version_key(item[0])))
    return ModelRouting(default, dict(aliases), ordered)


__all__ = ["READY", "ROUTING_FILE", "UNAVAILABLE", "IndexEntry", "ModelRouting", "Repository",
           "Snapshot", "parse_routing", "stable_fraction", "version_key"]
