"""Each method parameter declared once.

A method module declares ``SPEC = MethodSpec(..., params=(Param(...), ...), run=run)``
and writes ``def run(ctx, p)``. The ``Param`` declarations are the single source of:

- the CLI flag (``engine.app.cli`` builds ``--name`` from each) and the window's form
  field (``gui.panels.method_panel`` builds one editor per kind);
- the default, stated once, in the declaration;
- the validation: ``MethodSpec.bind`` turns what was given (flag text, a form's value, a
  sidecar's JSON, a Python value) into the value the method receives, through the
  parser of the parameter's kind (``KINDS``), then checks the bounds and the method's
  own relations between fields (``MethodSpec.check``). A value that does not fit raises
  ``ParamError``, one line naming the flag; the window shows it at the field;
- the recorded parameters: ``MethodSpec.start`` binds, runs, and fills ``Result.params``
  with the bound values, where the run wrote back what it resolved with
  ``p.record(layer=path, target=index)`` (a keyword resolved to a module path, "top-1"
  to a class index, 0 to the model's size).

Checks that need the model (a position off the layer's grid, a channel past the layer's
width) run in the method, through ``require_channel`` and ``require_position``.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from engine.core.errors import MethodInputError, ParamError, flag_of

if TYPE_CHECKING:
    from engine.core.jobs import Job

TEXT_LIMIT = 4096  # characters in any text value: a path's length on Linux
LIST_LIMIT = 64  # items in a list value unless its Param says fewer (``most``)
# Control characters and line or paragraph separators: a value is one line of text.
LINE_BREAKING = ("Cc", "Zl", "Zp")
PATH_SEPARATOR = ";"  # between the paths of several files written as one text


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message quotes it: text in quotes, on one line, cut short when long."""
    text = repr(value) if not isinstance(value, str) else value
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return f"'{text}'" if isinstance(value, str) else text


def _number_text(value: float) -> str:
    return shown(value) if isinstance(value, int) else f"{value:g}"


# -- the parsers, one per kind ------------------------------------------------------------
# Each takes the Param and a given value that is neither None nor blank text, and returns the
# bound value or raises ParamError. Each accepts its own output, so binding a bound value
# again gives the same value (a sidecar's parameters can be bound once more).

def _text(param: "Param", value: Any, what: str = "text") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ParamError(param.name, f"expects {what}, not {shown(value)}")
    text = str(value).strip()
    if len(text) > TEXT_LIMIT:
        raise ParamError(param.name, f"is too long ({len(text)} characters; at most {TEXT_LIMIT})")
    if any(unicodedata.category(c) in LINE_BREAKING for c in text):
        raise ParamError(param.name, f"must not contain control characters, not {shown(text)}")
    return text


def _bounded(param: "Param", number: int | float) -> int | float:
    if param.minimum is not None and number < param.minimum:
        if param.minimum == 0:
            raise ParamError(param.name, f"must not be negative, not {_number_text(number)}")
        raise ParamError(param.name, f"must be at least {_number_text(param.minimum)}, not {_number_text(number)}")
    if param.above is not None and number <= param.above:
        raise ParamError(param.name, f"must be above {_number_text(param.above)}, not {_number_text(number)}")
    if param.maximum is not None and number > param.maximum:
        raise ParamError(param.name, f"must be at most {_number_text(param.maximum)}, not {_number_text(number)}")
    return number


def _as_int(value: Any) -> int | None:
    """A whole number from an int, an integral float or the text of a whole number; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return int(number) if math.isfinite(number) and number.is_integer() else None
    if isinstance(value, str) and len(value) <= 100:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _as_float(value: Any) -> float | None:
    """A float from a real number or the text of one (possibly nan or inf); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and len(value) <= 100:
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _parse_int(param: "Param", value: Any) -> int:
    number = _as_int(value)
    if number is None:
        raise ParamError(param.name, f"expects a whole number, not {shown(value)}")
    return int(_bounded(param, number))


def _parse_float(param: "Param", value: Any) -> float:
    number = _as_float(value)
    if number is None:
        raise ParamError(param.name, f"expects a number, not {shown(value)}")
    if not math.isfinite(number):
        raise ParamError(param.name, f"must be a finite number, not {shown(value)}")
    return float(_bounded(param, number))


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_bool(param: "Param", value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ParamError(param.name, f"expects true or false, not {shown(value)}")


def _parse_choice(param: "Param", value: Any) -> str:
    text = _text(param, value, "one of " + ", ".join(map(str, param.choices)))
    if text not in param.choices:
        raise ParamError(param.name, f"must be one of {', '.join(map(str, param.choices))}, not {shown(text)}")
    return text


def _parse_layer(param: "Param", value: Any) -> str:
    return _text(param, value, "a layer: a module path, or early / middle / late")


def _parse_target(param: "Param", value: Any) -> str:
    text = _text(param, value, "a class index or label")
    if text.startswith("-") and text[1:].isdigit():
        raise ParamError(param.name, f"must not be negative, not {text}: class indices start at 0")
    return text


def _parse_channel(param: "Param", value: Any) -> int:
    number = _as_int(value)
    if number is None:
        raise ParamError(param.name, f"expects a channel index (a whole number), not {shown(value)}")
    if number < 0:
        raise ParamError(param.name, f"must not be negative, not {_number_text(number)}: channels count from 0")
    return int(_bounded(param, number))


def _parse_path(param: "Param", value: Any) -> str:
    if hasattr(value, "__fspath__"):
        value = str(value)
    return _text(param, value, "a file path")


def _parse_dataset(param: "Param", value: Any) -> str:
    if hasattr(value, "__fspath__"):
        value = str(value)
    return _text(param, value, "a dataset: a folder, or samples / digits")


def _parse_paths(param: "Param", value: Any) -> tuple[str, ...] | None:
    """Several paths: a sequence (the CLI's repeated flag), or text separated by ';' (a form's field)."""
    if hasattr(value, "__fspath__"):
        value = [value]
    items = value.split(PATH_SEPARATOR) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, (bytes, bytearray)):
        raise ParamError(param.name, f"expects file paths, not {shown(value)}")
    paths = tuple(path for path in (_parse_path(param, item) for item in items) if path)
    _count(param, len(paths), "file")
    return paths or None


def _is_list(value: Any) -> bool:
    """A sequence of items given as such (not text, not bytes)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _count(param: "Param", count: int, noun: str) -> None:
    most = param.most or LIST_LIMIT
    if count > most:
        raise ParamError(param.name, f"names {count} {noun}s; at most {most} at a time")


def _items(param: "Param", value: Any, separator: str, what: str) -> list:
    """A list value's items: the text split at ``separator`` (blank items dropped), or the
    sequence given; refuses anything else, and more items than allowed."""
    if isinstance(value, str):
        text = _text(param, value, what)
        items: list = [part.strip() for part in text.split(separator) if part.strip()]
    elif _is_list(value):
        items = list(value)
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ParamError(param.name, f"takes {what}, not {shown(value)}")
    _count(param, len(items), "item")
    return items


def _pair(param: "Param", value: Any, separators: str, what: str) -> tuple[int, int] | None:
    """Two whole numbers from text split at ``separators`` or from a sequence; else None."""
    if isinstance(value, str):
        parts: Sequence = re.split(separators, _text(param, value, what))
    elif _is_list(value):
        parts = value
    else:
        return None
    pair = [_as_int(part) for part in parts]
    return (pair[0], pair[1]) if len(pair) == 2 and None not in pair else None


def _parse_position(param: "Param", value: Any) -> tuple[int, int]:
    """'Y,X' (row, column of a layer's map; ';' or spaces also separate) -> (y, x)."""
    what = "a row and a column of the layer's map as Y,X, such as 3,5"
    position = _pair(param, value, r"\s*[,;\s]\s*", what)
    if position is None:
        raise ParamError(param.name, f"takes {what}; not {shown(value)}")
    y, x = position
    if y < 0 or x < 0:
        raise ParamError(param.name, f"{_number_text(y)},{_number_text(x)} is outside the map: "
                                     "rows and columns count from 0")
    return position


def _parse_weights(param: "Param", value: Any) -> tuple[float, ...]:
    """'0.7,0.3' -> (0.7, 0.3): a blend, so non-negative and not all zero."""
    what = "weights, numbers separated by commas such as 0.7,0.3"
    weights = [_as_float(item) for item in _items(param, value, ",", what)]
    if not weights or None in weights or not all(math.isfinite(w) for w in weights):
        raise ParamError(param.name, f"takes {what}; not {shown(value)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ParamError(param.name, f"must be non-negative and not all zero, not {shown(value)}")
    return tuple(float(_bounded(param, weight)) for weight in weights)


def _parse_layer_weights(param: "Param", value: Any) -> tuple[tuple[str, float], ...]:
    """'early:1, stages.3.2.expand_relu6:0.5, late' -> (("early", 1.0), ..., ("late", 1.0))."""
    example = "write layer:weight pairs separated by commas, e.g. 'early:1,late:0.5'"
    pairs = []
    for item in _items(param, value, ",", "layer:weight pairs"):
        if isinstance(item, str):
            name, _, weight = item.rpartition(":") if ":" in item else (item, ":", "1")
        elif _is_list(item) and len(item) == 2 and isinstance(item[0], str):
            name, weight = item
        else:
            raise ParamError(param.name, f"cannot read {shown(item)}; {example}")
        number = _as_float(weight)
        if not name.strip() or number is None or not math.isfinite(number):
            written = item if isinstance(item, str) else f"{name}:{weight}"
            raise ParamError(param.name, f"cannot read {shown(written)}; {example}")
        pairs.append((_text(param, name, "a layer name"), float(_bounded(param, number))))
    if not pairs:
        raise ParamError(param.name, f"names no layer; {example}")
    return tuple(pairs)


def _parse_channels(param: "Param", value: Any) -> tuple[int, ...]:
    """'0-7', '3,17,42' or '0-3,10' -> channel indices, in order, each once."""
    what = "indices and ranges such as 0-7 or 3,17,42"
    most = param.most or LIST_LIMIT
    channels: list[int] = []
    single = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    for item in _items(param, [value] if single else value, ",", what):
        text = item.replace(" ", "") if isinstance(item, str) else item
        if isinstance(text, str) and "-" in text.lstrip("-"):
            first, last = (_as_int(part) for part in text.split("-", 1))
            if first is None or last is None or first > last:
                raise ParamError(param.name, f"takes {what}, not {shown(value)}")
            if last - first + 1 > most:
                raise ParamError(param.name, f"names {_number_text(last - first + 1)} channels; "
                                             f"at most {most} at a time")
            channels.extend(range(first, last + 1))
        else:
            number = _as_int(text)
            if number is None:
                raise ParamError(param.name, f"takes {what}, not {shown(value)}")
            channels.append(number)
    channels = list(dict.fromkeys(channels))
    if not channels:
        raise ParamError(param.name, f"names no channel; give {what}")
    if min(channels) < 0:
        raise ParamError(param.name, f"must not be negative, not {_number_text(min(channels))}: channels count from 0")
    _count(param, len(channels), "channel")
    return tuple(channels)


def _parse_grid(param: "Param", value: Any) -> tuple[int, int]:
    """'20x15' -> (20 columns, 15 rows)."""
    cells = _pair(param, value.lower() if isinstance(value, str) else value, r"\s*x\s*", "a grid size")
    if cells is None:
        raise ParamError(param.name, f"must look like 20x15 (columns x rows), not {shown(value)}")
    low, high = int(param.minimum or 1), int(param.maximum or 1000)
    if not all(low <= cell <= high for cell in cells):
        raise ParamError(param.name, f"must be between {low}x{low} and {high}x{high}, "
                                     f"not {_number_text(cells[0])}x{_number_text(cells[1])}")
    return cells


def _name_list(noun: str, example: str) -> Callable[["Param", Any], tuple[str, ...]]:
    def parse(param: "Param", value: Any) -> tuple[str, ...]:
        what = f"{noun}s separated by commas, e.g. {example}"
        names = tuple(_text(param, item, f"a {noun}") for item in _items(param, value, ",", what))
        names = tuple(name for name in names if name)
        if not names:
            raise ParamError(param.name, f"names no {noun}: give {what}")
        return names
    return parse


def _channels_text(channels: Sequence[int]) -> str:
    """(0, 1, 2, 3, 9) -> '0-3,9': runs written as ranges."""
    runs: list[list[int]] = []
    for channel in channels:
        if runs and channel == runs[-1][1] + 1:
            runs[-1][1] = channel
        else:
            runs.append([channel, channel])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _float_text(value: float) -> str:
    return repr(float(value))


@dataclass(frozen=True)
class Kind:
    """How values of one kind are read and written.

    ``parse`` turns a given value into the bound value (raising ``ParamError``); ``text``
    writes a bound value as a flag or a text field spells it, so that parsing the text
    gives the value back. ``none_is_value``: None is a choice of its own (a channel left
    out means "all" or "the strongest") instead of "use the default".
    """

    name: str
    parse: Callable[["Param", Any], Any]
    text: Callable[[Any], str] = str
    none_is_value: bool = False


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("int", _parse_int),
    Kind("float", _parse_float, _float_text),
    Kind("bool", _parse_bool, lambda value: "true" if value else "false"),
    Kind("choice", _parse_choice),
    # a module path, or early / middle / late (and what the method names: first, penultimate)
    Kind("layer", _parse_layer),
    # a class index or a label; None: the image's top-1 class
    Kind("target", _parse_target),
    # a channel index; None: no channel (the method says what that means)
    Kind("channel", _parse_channel, none_is_value=True),
    # a built-in dataset name or a folder
    Kind("dataset", _parse_dataset),
    Kind("image", _parse_path),  # a picture to read
    Kind("images", _parse_paths, lambda paths: f"{PATH_SEPARATOR} ".join(paths)),  # several pictures, in order
    Kind("file", _parse_path),  # any file to read (or a name the method looks up)
    Kind("save_file", _parse_path),  # a file to write
    # Y,X on a layer's map
    Kind("position", _parse_position, lambda yx: f"{yx[0]},{yx[1]}"),
    # a blend's weights: comma-separated, non-negative, not all zero
    Kind("weights", _parse_weights, lambda weights: ",".join(map(_float_text, weights))),
    # layer:weight pairs
    Kind("layer_weights", _parse_layer_weights,
         lambda pairs: ",".join(f"{name}:{_float_text(weight)}" for name, weight in pairs)),
    # channel indices and ranges: 0-7,9
    Kind("channels", _parse_channels, _channels_text),
    # columns x rows: 20x15
    Kind("grid", _parse_grid, lambda cells: f"{cells[0]}x{cells[1]}"),
    # comma-separated layers (module paths or keywords)
    Kind("layers", _name_list("layer", "early,late"), ",".join),
    # comma-separated method ids
    Kind("methods", _name_list("method", "saliency,gradcam"), ",".join),
)}


@dataclass(frozen=True)
class Param:
    name: str  # the Python name; the CLI flag is --name-with-dashes, the form's label "name with spaces"
    kind: str  # a key of KINDS
    default: Any = None  # as a flag would give it ("0-7"), or as bound ((0, ..., 7)); None: left out
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None  # numbers, and each number of a list kind
    maximum: float | None = None
    above: float | None = None  # the value must be greater than this
    most: int | None = None  # items of a list kind (LIST_LIMIT when None)
    special: str = ""  # what the minimum value means when it is a sentinel ("model's size" for 0)
    # What leaving the field empty means, as a form names that choice ("class score (no
    # layer)"); "" reads it from the help's "(empty: ...)" or "(default: ...)".
    blank: str = ""
    # Values worth offering, asked afresh each time (trained styles in the library): the
    # GUI lists them in the field, which still takes any other value.
    suggest: Callable[[], list[str]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name}: no kind '{self.kind}' (known: {', '.join(KINDS)})")

    @property
    def flag(self) -> str:
        return flag_of(self.name)

    @property
    def label(self) -> str:
        """The form's name for the field."""
        return self.name.replace("_", " ")

    @property
    def blank_text(self) -> str:
        """What an empty field means, in words: ``blank``, else the help's "(empty: X)" or
        "(default: X)", else "default" (a form never offers a choice without a name)."""
        if self.blank:
            return self.blank
        said = re.search(r"\((?:empty|default): ([^()]*(?:\([^()]*\)[^()]*)*)\)", self.help)
        return said[1].strip() if said else "default"

    def coerce(self, value: Any) -> Any:
        """``value`` as the method receives it; None or blank text give the default."""
        kind = KINDS[self.kind]
        if value is None and kind.none_is_value:
            return None
        if value is None or (isinstance(value, str) and not value.strip()):
            return None if self.default is None else kind.parse(self, self.default)
        parsed = kind.parse(self, value)
        if parsed is None and self.default is not None:  # a list that names nothing: the default's
            return kind.parse(self, self.default)
        return parsed

    def text(self, value: Any) -> str:
        """A value as a flag or a text field spells it ("" for None); text is kept as it is."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        return KINDS[self.kind].text(value)


def require_channel(name: str, channel: int, count: int, layer: str) -> int:
    """``channel`` if ``layer`` has it (``count`` channels); else a ParamError for ``name``."""
    if not 0 <= channel < count:
        raise ParamError(name, f"must be between 0 and {count - 1}, not {_number_text(channel)}: "
                               f"{layer} has channels 0-{count - 1}")
    return channel


def require_position(name: str, position: tuple[int, int], grid: tuple[int, int], layer: str) -> tuple[int, int]:
    """``position`` if it lies on ``layer``'s ``grid`` (rows, columns); else a ParamError for ``name``."""
    (y, x), (height, width) = position, grid
    if not (0 <= y < height and 0 <= x < width):
        raise ParamError(name, f"{_number_text(y)},{_number_text(x)} is outside {layer}'s {height}x{width} map: "
                               f"rows 0-{height - 1}, columns 0-{width - 1}")
    return y, x


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the JSON shape of a recorded value."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class BoundParams(Mapping):
    """A method's parameters, bound: ``p.steps``, ``p["steps"]``; read-only but for ``record``."""

    __slots__ = ("_method", "_values")

    def __init__(self, method: str, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._method} has no parameter '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("bound parameters are read-only; write what the run resolved with p.record(...)")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"BoundParams({self._method}, {self._values!r})"

    def record(self, **resolved: Any) -> None:
        """What the run resolved (a keyword's module path, the top-1 index, the automatic
        batch): recorded in ``Result.params`` in place of what was asked, and read back
        from here on."""
        unknown = set(resolved) - set(self._values)
        if unknown:
            raise AttributeError(f"{self._method} has no parameter {', '.join(sorted(unknown))} to record")
        self._values.update(resolved)

    def recorded(self) -> dict[str, Any]:
        """The parameters as the run used them, in their JSON shape (lists, not tuples)."""
        return {name: _plain(value) for name, value in self._values.items()}


@dataclass(frozen=True)
class MethodSpec:
    id: str
    title: str
    summary: str
    params: tuple[Param, ...]
    run: Callable[..., "Job"]  # run(ctx, p): a generator that yields events and returns a Result
    needs_image: bool = True
    streams_frames: bool = False  # optimisation methods show their image evolving
    # Relations between fields (--stride at most --window), checked after each field on
    # its own; raises ParamError. Checks that need the model stay in ``run``.
    check: Callable[[BoundParams], None] | None = None
    # Whether a run takes gradients through the model, which a model that gives none
    # (``LoadedModel.forward_only``) refuses; ``gradient_free``: parameter values with which
    # a run of a gradient method takes none (Grad-CAM's Score-CAM variant).
    gradients: bool = True
    gradient_free: Mapping[str, Any] = field(default_factory=dict)
    # Several photos of one input size in shared passes (a folder run's group, ``start_many``):
    # run_many(contexts, one BoundParams each) yields events and returns, per photo, its
    # Result or the ConvScopeError that refused it. Such a method's ``run`` is its group of
    # one (``one_photo``), so both paths compute alike.
    run_many: Callable[..., "Job"] | None = None

    def __post_init__(self) -> None:
        names = [param.name for param in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id} declares a parameter twice: {names}")

    def param(self, name: str) -> Param:
        return next(param for param in self.params if param.name == name)

    def defaults(self) -> dict[str, Any]:
        """Each parameter's default as bound (before ``check``: a required field is None here)."""
        return {param.name: param.coerce(param.default) for param in self.params}

    def bind(self, values: Mapping[str, Any] | None = None) -> BoundParams:
        """Defaults overlaid with ``values``, each read and checked; then ``check``."""
        values = dict(values or {})
        known = {param.name: param for param in self.params}
        unknown = [str(name) for name in values if name not in known]
        if unknown:
            raise MethodInputError(f"{self.id} has no option {', '.join(sorted(unknown))}")
        bound = BoundParams(self.id, {name: param.coerce(values.get(name, param.default))
                                      for name, param in known.items()})
        if self.check is not None:
            self.check(bound)
        return bound

    def needs_gradients(self, bound: BoundParams) -> bool:
        return self.gradients and not (self.gradient_free and all(bound[name] == value
                                                                  for name, value in self.gradient_free.items()))

    def gradient_free_run(self) -> str | None:
        """How to run the method without gradients, as its flags say it (None: it cannot)."""
        if not self.gradients:
            return self.id
        if self.gradient_free:
            return " ".join([self.id, *(f"{flag_of(name)} {value}" for name, value in self.gradient_free.items())])
        return None

    def start(self, ctx, values: Mapping[str, Any] | None = None, /, **more: Any) -> "Job":
        """The run's job for ``values`` and ``more`` bound: binding errors raise here, at
        once, and so does a run that needs gradients of a model that gives none; the job's
        Result carries the recorded parameters."""
        bound = self.bind({**(values or {}), **more})
        if self.needs_gradients(bound):
            ctx.require_gradients(self.id)
        return self._job(ctx, bound)

    def _job(self, ctx, bound: BoundParams) -> "Job":
        result = yield from self.run(ctx, bound)
        result.params = bound.recorded()
        return result

    def start_many(self, contexts: Sequence, values: Mapping[str, Any] | None = None) -> "Job":
        """The job that runs several photos' contexts (one model, one input size) together
        (``run_many``); it returns each photo's Result, with its own recorded parameters,
        or the ConvScopeError that refused that photo alone. Binding errors raise here."""
        if self.run_many is None:
            raise ValueError(f"{self.id} runs one photo at a time")
        bound = [self.bind(values) for _ in contexts]
        if contexts and self.needs_gradients(bound[0]):
            contexts[0].require_gradients(self.id)
        return self._many_job(contexts, bound)

    def _many_job(self, contexts: Sequence, bound: list[BoundParams]) -> "Job":
        outcomes = yield from self.run_many(contexts, bound)
        for outcome, p in zip(outcomes, bound):
            if not isinstance(outcome, Exception):
                outcome.params = p.recorded()
        return outcomes


def one_photo(run_many: Callable[..., "Job"]) -> Callable[..., "Job"]:
    """``run(ctx, p)`` of a method with a ``run_many``: the group of one photo."""
    def run(ctx, p):
        outcome, = yield from run_many([ctx], [p])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return run


# Bounds the optimisation methods share. A step size above LR_LIMIT (in the units of each
# method's picture: Fourier coefficients, 0..1 pixels) or a loss weight above WEIGHT_LIMIT
# only drives the float32 loss to inf and the picture to NaN; a shift wraps around the
# picture, so one longer than the largest picture (JITTER_LIMIT) adds nothing.
LR_LIMIT = 10.0
WEIGHT_LIMIT = 1e6
JITTER_LIMIT = 1024
# softmax(F / T) over features of ordinary size is flat to float32's precision long before
# T reaches this.
TEMPERATURE_LIMIT = 1000.0

# Parameters many methods take, declared once.
LAYER = Param("layer", "layer", "middle", "module path, or early / middle / late")
TARGET = Param("target", "target", None, "class index or label (default: the top-1 class)")
# At most 2^31 - 1: OpenCV's and NumPy's generators take no larger seed than torch's do.
SEED = Param("seed", "int", 0, "random seed; the same seed gives the same result on the CPU", minimum=0,
             maximum=2**31 - 1)
FEATURE_LAYER = Param("layer", "layer", "penultimate",
                      "the feature layer, averaged over space; penultimate is what feeds the classifier")
DATASET = Param("dataset", "dataset", "samples", "a folder of images (subfolders become labels), a list file of image "
                "paths (.txt, .csv, .tsv, .lst; relative to the list; a label after a tab or comma), or 'samples' / "
                "'digits'")
# What the attribution methods share.
OVERLAY = Param("overlay", "bool", True, "draw the map over the photo; off: the map on its own")
# At most 1024 images a pass: the samples and steps it splits are at most 1000 anyway.
BATCH = Param("batch", "int", 0, "images per forward/backward pass (0: automatic)", minimum=0, maximum=1024,
              special="auto")
CAM_LAYER = Param("layer", "layer", "late", "the convolutional layer whose channels Grad-CAM weights "
                                           "(late: the last conv layer's activated output)")
SHOW = Param("show", "choice", "map", "map: |gradient| as a heat map; rgb: the gradient itself as a picture",
             choices=("map", "rgb"))
