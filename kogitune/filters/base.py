"""The filter model: a filter keeps (possibly changes) or drops one document; a pipeline runs filters in order.

Filters are dataclasses registered under a short name, so that a pipeline can be written as a config
(`{"filters": [{"name": "nfkc"}, {"name": "length", "min_chars": 200}]}`) and recorded in a data tensor's
provenance exactly as it ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..errors import FilterError, KogituneError
from ..protocol import jsonlimits


class FilterResult(NamedTuple):
    """What a filter decided about one document."""

    text: str | None
    """The kept (possibly changed) text, or None when the document is dropped."""
    score: float | None = None
    """The measured value the decision was based on, for percentile reports."""
    reason: str = ""
    """Why the document was dropped: short and stable, e.g. "too_short" or "lang_en_0.31"."""

    @property
    def dropped(self) -> bool:
        return self.text is None


class Filter:
    """Base class of all filters. Subclasses are dataclasses whose init fields are their config parameters."""

    name: ClassVar[str]
    # Declared for the type checker (dataclasses.fields(self)): every subclass is a dataclass.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    stateful: ClassVar[bool] = False
    """True for filters that remember earlier documents (dedup): they run in one process, in input order."""

    def apply(self, text: str) -> FilterResult:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """This filter's parameters as JSON-able values, the way a config file gives them."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}


REGISTRY: dict[str, type[Filter]] = {}


def register(cls: type[Filter]) -> type[Filter]:
    """Class decorator: make `cls` buildable from configs under `cls.name`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"filter {cls.__name__} must be a dataclass (its fields are its config parameters)")
    existing = REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"filter name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


def build_filter(name: str, **params: Any) -> Filter:
    """The registered filter `name` with `params`; unknown names or parameters raise FilterError listing valid ones."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise FilterError(f"unknown filter {name!r}; the filters are: {', '.join(sorted(REGISTRY))}")
    defaults = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(f"{key} (default {_default_of(field)!r})" for key, field in defaults.items()) or "none"
        raise FilterError(
            f"filter {name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters are: {valid}"
        )
    checked = {key: _checked(name, key, value, defaults[key]) for key, value in params.items()}
    try:
        return cls(**checked)
    except (ValueError, TypeError, KogituneError) as exc:
        raise FilterError(f"filter {name!r}: {exc}") from None


class Pipeline:
    """Filters run in order; the first one that drops a document stops the run."""

    def __init__(self, filters: list[Filter] | tuple[Filter, ...] = ()) -> None:
        self.filters = tuple(filters)

    @classmethod
    def from_config(cls, config: dict | str | os.PathLike[str]) -> Pipeline:
        """A pipeline from `{"filters": [{"name": ..., param: value}, ...]}`, or from a .json/.yaml file of it."""
        if isinstance(config, (str, os.PathLike)):
            config = _read_config_file(Path(config))
        if not isinstance(config, dict) or not isinstance(config.get("filters"), list):
            raise FilterError(
                'a filter config must be an object with a list "filters", e.g. '
                '{"filters": [{"name": "nfkc"}, {"name": "length", "min_chars": 200}]}'
            )
        filters = []
        for position, entry in enumerate(config["filters"], 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise FilterError(
                    f"filter {position} of the config is {entry!r}; each filter must be an object with "
                    'a "name", e.g. {"name": "length", "min_chars": 200}'
                )
            params = {key: value for key, value in entry.items() if key != "name"}
            filters.append(build_filter(entry["name"], **params))
        return cls(filters)

    def to_config(self) -> dict[str, Any]:
        """The JSON-able config that rebuilds this pipeline."""
        return {"filters": [f.to_config() for f in self.filters]}

    def to_provenance(self) -> dict[str, Any]:
        """The config with every float written as a string ("0.5"), as manifests allow no floats (their JSON
        must hash the same everywhere); `from_config` reads such strings back as the same floats."""
        return _floats_as_strings(self.to_config())

    @property
    def stateful(self) -> bool:
        return any(f.stateful for f in self.filters)

    def split_stateless_prefix(self) -> tuple[Pipeline, Pipeline]:
        """(the filters before the first stateful one, the rest): the first part can run in any process."""
        cut = next((i for i, f in enumerate(self.filters) if f.stateful), len(self.filters))
        return Pipeline(self.filters[:cut]), Pipeline(self.filters[cut:])

    def apply(self, text: str) -> FilterResult:
        """The final text, or a drop whose reason is prefixed by the dropping filter's name ("length:too_short")."""
        return self.trace(text)[0]

    def trace(self, text: str) -> tuple[FilterResult, list[FilterResult]]:
        """Like `apply`, plus each filter's own result in order, up to and including the one that dropped."""
        steps = []
        score = None
        for f in self.filters:
            result = f.apply(text)
            steps.append(result)
            if result.text is None:
                return FilterResult(None, result.score, f"{f.name}:{result.reason}"), steps
            text, score = result.text, result.score
        return FilterResult(text, score), steps

    def __len__(self) -> int:
        return len(self.filters)

    def __repr__(self) -> str:
        return f"Pipeline({[f.name for f in self.filters]})"


def parse_filter_spec(spec: str) -> dict[str, Any]:
    """One config entry from a command-line spec: "nfkc", "length:min_chars=200,max_chars=null",
    'language:languages=["ja","en"]'. Values are read as JSON where they parse, else as plain strings."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise FilterError(f"filter spec {spec!r} has no name; write NAME or NAME:KEY=VALUE,KEY=VALUE")
    entry: dict[str, Any] = {"name": name.strip()}
    for item in _top_level_split(rest) if rest.strip() else []:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise FilterError(f"filter spec {spec!r}: {item!r} is not KEY=VALUE")
        try:
            entry[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            entry[key.strip()] = value.strip()
    return entry


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets and quotes, so that JSON lists stay whole."""
    parts, depth, quoted, start = [], 0, False, 0
    for at, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(text[start:at])
            start = at + 1
    return parts + [text[start:]]


def _read_config_file(path: Path) -> Any:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FilterError(f"cannot read the filter config {path} ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise FilterError(
                f"{path} is YAML but PyYAML is not installed; pip install pyyaml, or write the config as JSON"
            ) from None
        try:
            return yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise FilterError(f"{path} is not valid YAML ({exc})") from None
    try:
        return jsonlimits.loads(source)
    except json.JSONDecodeError as exc:
        raise FilterError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "name the file .yaml if it is YAML"
        ) from None
    except ValueError as exc:  # nested too deeply
        raise FilterError(f"{path}: {exc}") from None


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _checked(filter_name: str, key: str, value: Any, field: dataclasses.Field) -> Any:
    """`value` if it has the type of the parameter's default (lists become tuples, 200.0 becomes 200 for ints, a
    string for a list becomes a list of one); null only where the parameter's annotation allows None."""
    default = _default_of(field)
    if default is None or value is None and "None" in str(field.type):
        return _frozen(value)
    if isinstance(value, str) and "float" in str(field.type):
        try:
            return float(value)
        except ValueError:
            raise FilterError(f"filter {filter_name!r}: parameter {key!r} must be a number, got {value!r}") from None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)) and isinstance(value, str):
        return (value,)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
        value = _floats_like(value, default) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise FilterError(
            f"filter {filter_name!r}: parameter {key!r} must be like its default {default!r}, got {value!r}"
        )
    return _frozen(value)


def _frozen(value: Any) -> Any:
    """Lists from JSON become tuples, so that filters can treat their parameters as constants."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _floats_like(value: Any, default: Any) -> Any:
    """`value` with strings turned into floats where `default` has a float in the same place (a list takes its
    default's first item as the model of every item): reads back the floats of `Pipeline.to_provenance`."""
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)) and default:
        models = default if len(default) == len(value) else [default[0]] * len(value)
        return [_floats_like(v, model) for v, model in zip(value, models)]
    return value


def _floats_as_strings(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [_floats_as_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats_as_strings(v) for k, v in value.items()}
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
