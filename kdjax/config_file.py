"""Study files: a study config as TOML, read with every error's file and line, and written back.

    kdjax distill --config path/to/study.toml
    kdjax distill --config hinton_mnist --show-config > study.toml    # every field; loads back the same

A study file holds the fields of a config dataclass (:class:`kdjax.config.StudyConfig`,
:class:`kdjax.lm_study.LMStudyConfig`; the caller names the classes, so this module knows none of
them): scalars and arrays at the top, each nested config as a table (``[teacher]``, ``[health]``; a
dotted key ``teacher.epochs = 5`` or an inline table works too), a study's method hyperparameters as
the table ``[method_hparams]``. Two top-level keys are not fields:

- ``kind``: which config the file holds, one of the caller's ``kinds`` (``kdjax distill``: ``"study"``
  or ``"lm_study"``). Without it, the kind of the file's ``preset``; without either, the first kind.
- ``preset``: a named config of that kind to start from. Every key the file leaves out keeps the
  preset's value; a nested table changes only the keys it names, and ``[method_hparams]`` adds to
  the preset's hyperparameters (as ``--set`` does). Without a preset, a key left out takes the
  field's default (a nested field's: its default config's value).

Values are typed as TOML types them, and checked against each field's annotation: an integer where
an ``int`` is wanted (a boolean is refused: in Python it is an int), an integer or a float where a
``float`` is (an integer becomes a float), an array for a tuple, each item checked.

None: TOML has no null. A field that is None is left out (:func:`dumps_toml` writes a comment,
``# dropout: none``) where a left-out key means None, that is where the field's default is None.
Where it is not (``max_rows``, 8000 by default), the string ``"none"`` stands for None; it does so in
any field that may be None and is not a string (``dropout = "none"`` unsets a preset's dropout).

Method hyperparameters (``[method_hparams]``) are typed after the method's factory defaults
(:func:`kdjax.methods.method_hparams`), as ``--set method.NAME=VALUE`` types them: a boolean for a
boolean, an array for a tuple, a number for a number (an integer stays one where the default is an
integer), a string for a string; where the default is None or there is none, the value as TOML types
it (an array becomes a tuple).

Every problem is reported at once, one a line, as ``FILE:LINE: key.path: problem``: a TOML syntax
error (with its column), an unknown key at any depth (with the closest known one), a value of the
wrong type, a required field that is missing. :mod:`tomllib` gives no line for a key, so
:func:`key_lines` finds them in the text. The config's own checks (``validate_study``) are the
caller's.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdjax.methods import method_hparams

# kind -> (the config dataclass, its presets by name), e.g. {"study": (StudyConfig, PRESETS)}
Kinds = Mapping[str, tuple[type, Mapping[str, Any]]]

RESERVED = ("kind", "preset")  # top-level keys that are not fields
NONE = "none"  # stands for None in a field that may be None and is not a string, where a left-out key does not
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MISSING = dataclasses.MISSING
_BAD = object()  # a value that could not be read (its problem is recorded)


class StudyFileError(ValueError):
  """A study file that cannot be read: :attr:`problems`, one ``FILE:LINE: key: problem`` each, in
  line order; the message is them, one a line."""

  def __init__(self, problems: list[str]):
    super().__init__("\n".join(problems))
    self.problems = list(problems)


# ---------------------------------------------------------------------------------------------------
# Writing


def dumps_toml(cfg, *, kind: str | None = None) -> str:
  """Config dataclass ``cfg`` as a study file: every field, nested configs as tables, a header
  comment saying what it is and how to run it; ``kind`` (if given) written as the file's ``kind``.
  :func:`loads_toml` reads it back to an equal config. A value of a type the file cannot hold, or
  None where a left-out key would not mean None and ``"none"`` cannot stand for it, is a ValueError."""
  name = type(cfg).__name__
  lines = [f"# A kdjax study file: every field of a {name}, written by `kdjax distill --show-config`.",
           "# Run it: kdjax distill --config THIS_FILE.toml  (--set KEY=VALUE and the other flags apply on top;",
           "# docs/study_files.md). TOML has no null: a field shown as `# KEY: none` is None, its key left out.",
           ""]
  if kind is not None:
    lines.append(f"kind = {_toml_string(kind)}")
  _write_table(cfg, None, (), lines)
  return "\n".join(lines) + "\n"


def _write_table(cfg, base, where: tuple, lines: list[str]) -> None:
  """The fields of dataclass ``cfg`` (read over ``base``: see :func:`_field_base`) at table ``where``."""
  hints = typing.get_type_hints(type(cfg))
  tables = []
  for f in dataclasses.fields(cfg):
    value, tp, path = getattr(cfg, f.name), hints[f.name], where + (f.name,)
    if dataclasses.is_dataclass(value):
      table_base = _field_base(base, f)
      tables.append((path, value, None if table_base is _MISSING else table_base))
    elif _is_pairs(tp):
      tables.append((path, value, None))
    elif value is None:
      if _field_base(base, f) is None:
        lines.append(f"# {_toml_key(f.name)}: none")
      elif _none_string_allowed(tp):
        lines.append(f"{_toml_key(f.name)} = {_toml_string(NONE)}")
      else:
        raise ValueError(f"{_dotted(path)} is None, which a study file cannot hold: TOML has no null, a left-out key "
                         f"means {_field_base(base, f)!r} and the field is a string")
    else:
      lines.append(f"{_toml_key(f.name)} = {_typed_value(value, tp, path)}")
  for path, value, table_base in tables:
    lines += ["", "[" + ".".join(_toml_key(k) for k in path) + "]"]
    if dataclasses.is_dataclass(value):
      _write_table(value, table_base, path, lines)
    else:
      if not value:
        lines.append("# none set: the method's defaults (kdjax list); NAME = VALUE each")
      for k, v in value:
        lines.append(f"{_toml_key(k)} = {_any_value(v, path + (k,))}")


def _typed_value(value, tp, path: tuple) -> str:
  """``value`` of a field annotated ``tp`` as a TOML value."""
  origin = typing.get_origin(tp)
  if origin in (types.UnionType, typing.Union):
    return _typed_value(value, _optional_inner(tp), path)
  if origin is tuple:
    elem = _tuple_item(tp)
    if isinstance(value, (tuple, list)) and elem is not None:
      return "[" + ", ".join(_typed_value(v, elem, path + (i,)) for i, v in enumerate(value)) + "]"
  elif tp is bool and isinstance(value, bool):
    return "true" if value else "false"
  elif tp is int and isinstance(value, int) and not isinstance(value, bool):
    return int.__repr__(value)
  elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float.__repr__(float(value))  # the shortest repr that reads back exactly; inf, -inf and nan are TOML's too
  elif tp is str and isinstance(value, str):
    return _toml_string(value)
  elif tp is Any:
    return _any_value(value, path)
  raise ValueError(f"{_dotted(path)} = {value!r}: a study file cannot hold this value of a field typed {tp}")


def _any_value(value, path: tuple) -> str:
  """``value`` (a bool, int, float, string, or a tuple or list of them) as a TOML value, typed as it is."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, int):
    return int.__repr__(value)
  if isinstance(value, float):
    return float.__repr__(value)
  if isinstance(value, str):
    return _toml_string(value)
  if isinstance(value, (tuple, list)):
    return "[" + ", ".join(_any_value(v, path + (i,)) for i, v in enumerate(value)) + "]"
  raise ValueError(f"{_dotted(path)} = {value!r}: a study file holds booleans, integers, floats, strings and "
                   f"arrays of them, not {type(value).__name__}" + (" (TOML has no null)" if value is None else ""))


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
  """``text`` as a TOML basic string (quotes, backslashes and control characters escaped)."""
  out = []
  for ch in text:
    if ch in _ESCAPES:
      out.append(_ESCAPES[ch])
    elif ord(ch) < 0x20 or ord(ch) == 0x7F:
      out.append(f"\\u{ord(ch):04X}")
    else:
      out.append(ch)
  return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
  return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


# ---------------------------------------------------------------------------------------------------
# Reading


def load_toml(path, kinds: Kinds) -> tuple[str, Any]:
  """The study file at ``path``: ``(kind, config)``, the config an instance of ``kinds[kind][0]``
  (see the module's docstring for the format). Anything wrong with the file, a file that cannot be
  read included, is a :class:`StudyFileError` naming each problem with the file and line."""
  try:
    text = Path(path).read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise StudyFileError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
  except OSError as e:
    raise StudyFileError([f"{path}: cannot read the study file: {e.strerror or e}"]) from None
  return loads_toml(text, kinds, path=str(path))


def loads_toml(text: str, kinds: Kinds, *, path: str = "<string>") -> tuple[str, Any]:
  """:func:`load_toml` on the text of a study file; ``path`` names it in the errors."""
  for cls, _ in kinds.values():
    clash = [f.name for f in dataclasses.fields(cls) if f.name in RESERVED]
    if clash:
      raise TypeError(f"{cls.__name__} has a field named {clash[0]!r}, a study file's reserved key")
  try:
    doc = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise StudyFileError([_syntax_problem(text, e, path)]) from None
  ctx = _Context(path, key_lines(text), [])
  kind, base = _kind_and_base(doc, kinds, ctx)
  if kind is None:
    raise StudyFileError(ctx.sorted_problems())
  cls = kinds[kind][0]
  cfg = _build(cls, {k: v for k, v in doc.items() if k not in RESERVED}, base, (), ctx)
  if ctx.problems:
    if "kind" not in doc and "preset" not in doc:
      _hint_other_kind(doc, kind, kinds, ctx)
    raise StudyFileError(ctx.sorted_problems())
  return kind, cfg


@dataclasses.dataclass
class _Context:
  """What a read needs to report a problem: the file's name, its keys' lines, the problems so far."""

  path: str
  lines: dict[tuple, int]
  problems: list[tuple[int, tuple, str]]  # (line, key, message)

  def bad(self, key: tuple, message: str) -> object:
    """Records ``message`` about ``key`` (at its line, or its nearest enclosing key's); returns ``_BAD``."""
    self.problems.append((self.line(key), key, message))
    return _BAD

  def line(self, key: tuple) -> int:
    for n in range(len(key), 0, -1):
      if key[:n] in self.lines:
        return self.lines[key[:n]]
    return 1

  def sorted_problems(self) -> list[str]:
    return [f"{self.path}:{line}: {_dotted(key) + ': ' if key else ''}{message}"
            for line, key, message in sorted(self.problems, key=lambda p: p[0])]


def _kind_and_base(doc: dict, kinds: Kinds, ctx: _Context) -> tuple[str | None, Any]:
  """The file's kind (None after a problem) and the preset it starts from (None: none)."""
  kind = doc.get("kind")
  if kind is not None and kind not in kinds:
    ctx.bad(("kind",), f"expected one of {', '.join(map(_toml_string, kinds))}, got {_describe(kind)}")
    return None, None
  preset = doc.get("preset")
  if preset is None:
    return kind or next(iter(kinds)), None
  if not isinstance(preset, str):
    ctx.bad(("preset",), f"expected a preset's name, a string; got {_describe(preset)}")
    return None, None
  owners = [k for k, (_, presets) in kinds.items() if preset in presets]
  if not owners:
    names = sorted(n for _, presets in kinds.values() for n in presets)
    ctx.bad(("preset",), f"unknown preset {preset!r}{_did_you_mean(preset, names)}; presets: {', '.join(names)}")
    return None, None
  if kind is not None and kind not in owners:
    ctx.bad(("preset",), f"{preset!r} is a preset of kind {owners[0]!r}, but the file's kind is {kind!r}")
    return None, None
  kind = kind or owners[0]
  return kind, kinds[kind][1][preset]


def _hint_other_kind(doc: dict, kind: str, kinds: Kinds, ctx: _Context) -> None:
  """A file of the default kind whose keys are all another kind's fields: say so, at the first one
  the default kind does not have."""
  own = {f.name for f in dataclasses.fields(kinds[kind][0])}
  for other, (cls, _) in kinds.items():
    fields = {f.name for f in dataclasses.fields(cls)}
    if other != kind and set(doc) <= fields and set(doc) - own:
      first = min(set(doc) - own, key=lambda k: ctx.line((k,)))
      for i, (line, key, _) in enumerate(ctx.problems):
        if len(key) == 1 and key[0] in fields - own:
          ctx.problems[i] = (line, key, f"unknown key of kind {kind!r}, a field of {cls.__name__}" + (
              f": put kind = {_toml_string(other)} at the file's top (a file with neither kind nor preset is of "
              f"kind {kind!r})" if key[0] == first else ""))
      return


def _field_base(base, f: dataclasses.Field):
  """What field ``f`` is where the file leaves it out: ``base``'s value (a preset's, or an enclosing
  default config's), else the field's default, else ``_MISSING``."""
  if base is not None:
    return getattr(base, f.name)
  if f.default is not _MISSING:
    return f.default
  if f.default_factory is not _MISSING:
    return f.default_factory()
  return _MISSING


def _build(cls, table: dict, base, where: tuple, ctx: _Context):
  """A ``cls`` from the TOML table ``table`` at ``where``, every key left out taken from ``base`` (an
  instance, or None: the class's defaults); ``_BAD`` after a problem."""
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  values, ok = {}, True
  pairs = [name for name in table if name in fields and _is_pairs(hints[name])]
  for name, value in table.items():
    key = where + (name,)
    if name not in fields:
      known = list(fields) + (list(RESERVED) if not where else [])
      close = _did_you_mean(name, known)
      ctx.bad(key, f"unknown key{close}" if close else f"unknown key; {cls.__name__} has: {', '.join(fields)}")
      ok = False
    elif name not in pairs:
      values[name] = _read_value(value, hints[name], _field_base(base, fields[name]), key, ctx)
  if "method" in table and values.get("method", _BAD) is not _BAD and any(_is_pairs(t) for t in hints.values()):
    values["method"] = _check_method(values["method"], where + ("method",), ctx)
  for name in pairs:  # a method's hyperparameters, typed after the method the file (or its base) names
    method = values.get("method", _field_base(base, fields["method"]) if "method" in fields else _MISSING)
    values[name] = _read_hparams(table[name], method, _field_base(base, fields[name]), where + (name,), ctx)
  missing = [n for n in fields if n not in values and _field_base(base, fields[n]) is _MISSING]
  for name in missing:
    hint = " (or start from a preset: preset = \"NAME\")" if not where else ""
    ctx.bad(where + (name,), f"missing: {cls.__name__} has no default for it{hint}")
  if not ok or missing or any(v is _BAD for v in values.values()):
    return _BAD
  try:
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
  except (ValueError, TypeError) as e:  # the class's own check (e.g. HealthThresholds'), at the key it names
    message = str(e)
    named = re.match(r"[\w.]+", message)
    key = tuple(named.group().split(".")) if named else ()
    if key in ctx.lines and message.startswith(_dotted(key) + " "):
      return ctx.bad(key, message[len(_dotted(key)) + 1:])
    return ctx.bad(where, message)


def _read_value(value, tp, current, key: tuple, ctx: _Context):
  """``value`` read from the file for a field annotated ``tp`` whose value it replaces is ``current``."""
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, dict):
      return ctx.bad(key, f"expected a table ([{_dotted(key)}]), got {_describe(value)}")
    return _build(tp, value, None if current is _MISSING else current, key, ctx)
  origin = typing.get_origin(tp)
  if origin in (types.UnionType, typing.Union):
    inner = _optional_inner(tp)
    if value == NONE and _none_string_allowed(tp):
      return None
    if not _fits(value, inner):
      return ctx.bad(key, f"expected {_expected(tp)}, got {_describe(value)}")
    return _read_value(value, inner, current, key, ctx)
  if origin is tuple:
    elem = _tuple_item(tp)
    if not isinstance(value, list):
      return ctx.bad(key, f"expected {_expected(tp)}, got {_describe(value)}")
    items = [_read_value(v, elem, _MISSING, key + (i,), ctx) for i, v in enumerate(value)]
    return _BAD if any(v is _BAD for v in items) else tuple(items)
  if tp in (bool, int, float, str):
    if not _fits(value, tp):
      return ctx.bad(key, f"expected {_expected(tp)}, got {_describe(value)}")
    if tp is float and not math.isfinite(value):  # as --set refuses them: no field takes inf or nan
      return ctx.bad(key, f"expected a finite number, got {_describe(value)}")
    return float(value) if tp is float else value
  return ctx.bad(key, f"a field typed {tp} cannot be read from a study file")


def _fits(value, tp) -> bool:
  """Whether TOML value ``value`` is one of type ``tp`` (a scalar type, a tuple or a dataclass)."""
  if tp is bool:
    return isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  if typing.get_origin(tp) is tuple:
    return isinstance(value, list)
  return dataclasses.is_dataclass(tp) and isinstance(value, dict)


def _check_method(name: str, key: tuple, ctx: _Context):
  """The method a file names, which must exist: its hyperparameters are typed after its factory."""
  try:
    method_hparams(name)
  except ValueError as e:
    return ctx.bad(key, str(e))
  return name


def _read_hparams(table, method, current, key: tuple, ctx: _Context):
  """``[method_hparams]``: sorted ``(name, value)`` pairs, the table's over ``current``'s, each typed
  after ``method``'s factory default for it (see the module's docstring)."""
  if not isinstance(table, dict):
    return ctx.bad(key, f"expected a table ([{_dotted(key)}], NAME = VALUE each), got {_describe(table)}")
  if method is _BAD or method is _MISSING:
    return _BAD if method is _BAD else ctx.bad(key, "no method to type the hyperparameters after")
  try:
    params = method_hparams(method)
  except ValueError as e:
    return ctx.bad(key, str(e))
  hparams = dict(() if current is _MISSING else current)
  ok = True
  for name, value in table.items():
    if name not in params:
      listed = ", ".join(params) or "none"
      ctx.bad(key + (name,), f"method {method!r} has no hyperparameter {name!r}"
                             f"{_did_you_mean(name, list(params))}; its hyperparameters: {listed}")
      ok = False
      continue
    default = params[name].default
    read = _read_hparam(value, None if default is params[name].empty else default, key + (name,), ctx)
    ok = ok and read is not _BAD
    hparams[name] = read
  return tuple(sorted(hparams.items())) if ok else _BAD


def _read_hparam(value, default, key: tuple, ctx: _Context):
  """One hyperparameter typed after its factory ``default`` (None: none usable)."""
  if isinstance(value, (dict, datetime.date, datetime.time)):
    return ctx.bad(key, f"expected a boolean, number, string or array, got {_describe(value)}")
  if isinstance(default, bool):
    tp = bool
  elif isinstance(default, tuple):
    if not isinstance(value, list):
      return ctx.bad(key, f"expected an array (its default is {_any_value(default, key)}), got {_describe(value)}")
    item = type(default[0]) if default else None
    for i, v in enumerate(value):
      if isinstance(v, (list, dict)) or (item is not None and not _fits(v, item)):
        return ctx.bad(key + (i,), f"expected {_expected(item) if item else 'a boolean, number or string'}, "
                                   f"got {_describe(v)}")
    return tuple(value)
  elif isinstance(default, int):
    return value if _fits(value, float) else ctx.bad(key, f"expected a number, got {_describe(value)}")
  elif isinstance(default, (float, str)):
    tp = type(default)
  else:
    if isinstance(value, list):
      bad = [i for i, v in enumerate(value) if isinstance(v, (list, dict, datetime.date, datetime.time))]
      return ctx.bad(key + (bad[0],), f"expected a boolean, number or string, got {_describe(value[bad[0]])}") \
          if bad else tuple(value)
    return value
  if not _fits(value, tp):
    return ctx.bad(key, f"expected {_expected(tp)}, got {_describe(value)}")
  return float(value) if tp is float else value


# ---------------------------------------------------------------------------------------------------
# Types and their words


def _optional_inner(tp):
  args = [a for a in typing.get_args(tp) if a is not type(None)]
  if len(args) != 1:
    raise TypeError(f"a study file's field may be X or X | None, not {tp}")
  return args[0]


def _none_string_allowed(tp) -> bool:
  """Whether ``"none"`` stands for None in a field annotated ``tp``: it may be None and is not a string."""
  return (typing.get_origin(tp) in (types.UnionType, typing.Union) and type(None) in typing.get_args(tp)
          and _optional_inner(tp) is not str)


def _tuple_item(tp):
  """``X`` of ``tuple[X, ...]``; None for another tuple type."""
  args = typing.get_args(tp)
  return args[0] if len(args) == 2 and args[1] is Ellipsis else None


def _is_pairs(tp) -> bool:
  """Whether ``tp`` is ``tuple[tuple[str, Any], ...]``: a method's hyperparameters as sorted pairs."""
  return typing.get_origin(tp) is tuple and _tuple_item(tp) == tuple[str, Any]


_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _expected(tp) -> str:
  origin = typing.get_origin(tp)
  if origin in (types.UnionType, typing.Union):
    inner = _optional_inner(tp)
    return _expected(inner) + (f" or {_toml_string(NONE)}" if _none_string_allowed(tp) else
                               " (leave the key out for none)")
  if origin is tuple and _tuple_item(tp) in _WORDS:
    return f"an array of {_WORDS[_tuple_item(tp)][1]}"
  if tp in _WORDS:
    return _WORDS[tp][0]
  return "a table" if dataclasses.is_dataclass(tp) else str(tp)


def _describe(value) -> str:
  """What a TOML value is, in words, with the value: ``a string ("10")``."""
  if isinstance(value, bool):
    kind = "a boolean"
  elif isinstance(value, int):
    kind = "an integer"
  elif isinstance(value, float):
    kind = "a float"
  elif isinstance(value, str):
    kind = "a string"
  elif isinstance(value, list):
    kind = "an array"
  elif isinstance(value, dict):
    return "a table"
  else:
    return f"a date or time ({value})"
  try:
    shown = _any_value(value, ())
  except ValueError:
    shown = "..."
  return f"{kind} ({shown if len(shown) <= 60 else shown[:57] + '...'})"


def _did_you_mean(name: str, known: list[str]) -> str:
  close = difflib.get_close_matches(name, known, n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _dotted(key: tuple) -> str:
  out = ""
  for k in key:
    out += f"[{k}]" if isinstance(k, int) else (("." if out else "") + (k if _BARE_KEY.fullmatch(k) else
                                                                       _toml_string(k)))
  return out


def locate_problem(path, message: str, *, overridden=()) -> str:
  """``message`` (a check's error on a config read from the study file ``path``, e.g. ``distilled.epochs
  must be >= 1, got 0``) as ``FILE:LINE: message``, the line where the file sets the first key the message
  names (the earliest named, the longest at one place); the message alone when it names no key the file
  sets, or only keys in ``overridden`` (dotted keys given on the command line, e.g. by --set)."""
  try:
    text = Path(path).read_text(encoding="utf-8-sig")
    values = _value_keys(tomllib.loads(text))
  except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
    return message
  lines = key_lines(text)
  found = []
  for key in values:
    dotted = _dotted(key)
    if key[0] in RESERVED or key not in lines or dotted in overridden:
      continue
    m = re.search(rf"(?<![\w.]){re.escape(dotted)}(?![\w.])", message)
    if m:
      found.append((m.start(), -len(key), lines[key]))
  return f"{path}:{min(found)[2]}: {message}" if found else message


def _value_keys(doc: dict, prefix: tuple = ()) -> list[tuple]:
  """The paths of the keys of a parsed TOML document that hold a value (not a table)."""
  keys = []
  for k, v in doc.items():
    keys += _value_keys(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
  return keys


# ---------------------------------------------------------------------------------------------------
# Lines


def key_lines(text: str) -> dict[tuple, int]:
  """The line (from 1) of every key of the TOML document ``text``, by its path from the root: table
  headers, ``key = value`` lines, each prefix of a dotted key (where it is first named), the keys of
  inline tables and the items of arrays (by index; an array of tables' tables too). Assumes
  ``text`` parses; a key defined twice keeps its first line (:func:`_duplicate_key` finds the second)."""
  lines: dict[tuple, int] = {}
  try:
    _scan(text, lines)
  except (IndexError, ValueError):  # text this scanner misreads: the keys found so far (the others: line 1)
    pass
  return lines


def _duplicate_key(text: str) -> tuple[tuple, int, int] | None:
  """The first key ``text`` defines twice: ``(key, its first line, the second)``; None if none (or if
  the text is too broken to tell)."""
  try:
    return _scan(text, {})
  except (IndexError, ValueError):
    return None


def _scan(text: str, lines: dict[tuple, int]) -> tuple[tuple, int, int] | None:
  """Fills ``lines`` as :func:`key_lines` says; the first key defined twice (see :func:`_duplicate_key`)."""
  starts = [0] + [m.end() for m in re.finditer("\n", text)]
  defined: set[tuple] = set()  # keys given a value or a header (not those only named as a prefix)
  duplicate = None
  arrays: dict[tuple, int] = {}  # arrays of tables: how many tables so far
  pos, n = 0, len(text)

  def line_at(p: int) -> int:
    return bisect.bisect_right(starts, p)

  def record(key: tuple, at: int, define: bool = True) -> None:
    nonlocal duplicate
    for k in range(1, len(key) + 1):
      lines.setdefault(key[:k], at)
    if define:
      if key in defined and duplicate is None:
        duplicate = (key, lines[key], at)
      defined.add(key)

  def skip_space(newlines: bool) -> None:
    nonlocal pos
    while pos < n:
      ch = text[pos]
      if ch in " \t" or (newlines and ch in "\r\n"):
        pos += 1
      elif ch == "#" and newlines:
        while pos < n and text[pos] != "\n":
          pos += 1
      else:
        return

  def skip_string() -> str:
    """Past the string at ``pos``; its raw text."""
    nonlocal pos
    start, quote = pos, text[pos]
    if text.startswith(quote * 3, pos):
      end = text.index(quote * 3, pos + 3) if quote == "'" else _basic_end(text, pos + 3, multiline=True)
      extra = 0
      while extra < 2 and text.startswith(quote, end + 3):  # quotes of the content just before the closing three
        end, extra = end + 1, extra + 1
      pos = end + 3
    else:
      pos = (text.index("'", pos + 1) if quote == "'" else _basic_end(text, pos + 1, multiline=False)) + 1
    return text[start:pos]

  def read_key() -> tuple:
    nonlocal pos
    parts = []
    while True:
      skip_space(False)
      if text[pos] in "\"'":
        parts.append(tomllib.loads(f"k = {skip_string()}")["k"])
      else:
        m = _BARE_KEY.match(text, pos)
        if not m:
          raise ValueError(f"no key at offset {pos}")
        parts.append(m.group())
        pos = m.end()
      skip_space(False)
      if pos < n and text[pos] == ".":
        pos += 1
      else:
        return tuple(parts)

  def scan_value(key: tuple) -> None:
    nonlocal pos
    ch = text[pos]
    if ch in "\"'":
      skip_string()
    elif ch in "[{":
      pos += 1
      i = 0
      while True:
        skip_space(True)
        if text[pos] in "]}":
          pos += 1
          return
        if ch == "[":
          record(key + (i,), line_at(pos))
          scan_value(key + (i,))
          i += 1
        else:
          at = line_at(pos)
          sub = key + read_key()
          record(sub, at)
          pos += 1  # "="
          skip_space(False)
          scan_value(sub)
        skip_space(True)
        if text[pos] == ",":
          pos += 1
    else:
      while pos < n and text[pos] not in ",]}#\r\n":
        pos += 1

  table: tuple = ()
  while True:
    skip_space(True)
    if pos >= n:
      return duplicate
    at = line_at(pos)
    if text[pos] == "[":
      array = text.startswith("[[", pos)
      pos += 2 if array else 1
      header = read_key()
      pos += 2 if array else 1
      if array:
        arrays[header] = arrays.get(header, 0) + 1
        record(header, at, define=False)
        table = header + (arrays[header] - 1,)
      else:
        table = header
      record(table, at)
    else:
      key = table + read_key()
      record(key, at)
      pos += 1  # "="
      skip_space(False)
      scan_value(key)


def _basic_end(text: str, pos: int, *, multiline: bool) -> int:
  """The offset of the quote(s) closing a basic string whose content starts at ``pos``."""
  closing = '"""' if multiline else '"'
  while True:
    if text[pos] == "\\":
      pos += 2
    elif text.startswith(closing, pos):
      return pos
    else:
      pos += 1


def _syntax_problem(text: str, e: tomllib.TOMLDecodeError, path: str) -> str:
  """A TOML syntax error as ``FILE:LINE: ...`` (a key defined twice at the second definition)."""
  message = str(e)
  m = re.search(r" \(at line (\d+), column (\d+)\)$", message)
  if m:
    line, column, message = int(m.group(1)), int(m.group(2)), message[:m.start()]
  else:
    line, column = max(text.count("\n") + (0 if text.endswith("\n") else 1), 1), None
    message = re.sub(r" \(at end of document\)$", "", message)
  if message.startswith(("Cannot overwrite a value", "Cannot declare")):
    dup = _duplicate_key(text)
    if dup is not None:
      key, first, second = dup
      return f"{path}:{second}: {_dotted(key)}: defined twice (first at line {first})"
  where = f" (column {column})" if column is not None else " (at the end of the file)"
  return f"{path}:{line}: invalid TOML{where}: {message}"
