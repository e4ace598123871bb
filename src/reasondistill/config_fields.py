"""The config's fields, walked once: ``config show``, ``config docs`` and "did you mean" for keys.

Why: what each config key means is written in one place, the pydantic ``Field(description=...)``
of its model. This module reads it from there for three uses: ``reasondistill config show``
prints a resolved config as YAML with each key's description as a comment; ``reasondistill
config docs`` writes the reference in docs/config.md; and a misspelled key ("Extra inputs are not
permitted") is answered with the closest field name at that place (:func:`model_at`). It takes
the models as arguments (it imports no config module), so the config layer can use it.

    print(show(load_config("configs/demo.yaml")))
"""

from __future__ import annotations

import json
import textwrap
import types
import typing
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, Tag
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

Models = list[tuple[str | None, type[BaseModel]]]  # (union tag or None, model) pairs
COMMENT_WIDTH = 110  # `config show` wraps a description past this column


def models_in(annotation: Any) -> Models:
    """The models a field's annotation can hold (through Optional, list, Annotated and tagged unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(None, annotation)]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        tags = [m.tag for m in args[1:] if isinstance(m, Tag)]
        return [(tags[0] if tags else tag, model) for tag, model in models_in(args[0])]
    return [pair for arg in args for pair in models_in(arg)]


def model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model at a pydantic error location (list indices and union tags included), or None."""
    models: Models = [(None, root)]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [model for tag, model in models if tag is not None and tag == part]
        if tagged:
            models = [(None, tagged[0])]
            continue
        owner = next((model for _tag, model in models if part in model.model_fields), None)
        if owner is None:
            return None
        models = models_in(owner.model_fields[part].annotation)
    return models[0][1] if len(models) == 1 else None


# -- config show: the resolved config as YAML, each key's description as a comment ---------------
def flow(value: Any) -> str:
    """One value as one line of YAML (flow style; a string with line breaks as a JSON string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True).strip()
    text = text.removesuffix("\n...")
    return json.dumps(value, ensure_ascii=False) if "\n" in text else text


def _field(model: BaseModel, key: str) -> tuple[FieldInfo | None, Any]:
    """The field behind a dumped key, and its value; a key of a nested model that the dump
    flattens into its parent (a mixture source's task) is found one level down."""
    fields = type(model).model_fields
    if key in fields:
        return fields[key], getattr(model, key)
    for name in fields:
        inner = getattr(model, name)
        if isinstance(inner, BaseModel) and key in type(inner).model_fields:
            return type(inner).model_fields[key], getattr(inner, key)
    return None, None


def _commented(line: str, field: FieldInfo | None) -> list[str]:
    if field is None or not field.description:
        return [line]
    column = len(line) + 2
    parts = textwrap.wrap(field.description, width=max(40, COMMENT_WIDTH - column - 2))
    return [f"{line}  # {parts[0]}", *(f"{' ' * column}# {part}" for part in parts[1:])]


def _mapping(model: BaseModel, data: dict[str, Any], indent: int, lines: list[str], first: str = "") -> None:
    pad = " " * indent
    for i, (key, value) in enumerate(data.items()):
        field, inner = _field(model, key)
        lead = first if i == 0 and first else pad
        if isinstance(inner, BaseModel) and isinstance(value, dict) and value:
            lines += _commented(f"{lead}{key}:", field)
            _mapping(inner, value, indent + 2, lines)
        elif isinstance(inner, list) and value and all(isinstance(x, BaseModel) for x in inner):
            lines += _commented(f"{lead}{key}:", field)
            for item, item_data in zip(inner, value):
                _mapping(item, item_data, indent + 2, lines, first=pad + "- ")
        else:
            lines += _commented(f"{lead}{key}: {flow(value)}", field)


def show(cfg: BaseModel) -> str:
    """``cfg`` as YAML (the same values ``model_dump`` gives), each key followed by its description."""
    lines: list[str] = []
    _mapping(cfg, cfg.model_dump(mode="json"), 0, lines)
    return "\n".join(lines) + "\n"


# -- config docs: a Markdown reference of every section ------------------------------------------
def type_name(annotation: Any) -> str:
    """A short reader's name of a field's type: ``int or null``, ``"auto" or "model"``, ``list of int``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(a) for a in args))
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        return f"[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return "any" if annotation is Any else getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """A table cell: the default as YAML in code font, "required", or "see below" for a section."""
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return "see below" if isinstance(value, BaseModel) else f"`{cell(flow(to_jsonable_python(value)))}`"


def sections(model: type[BaseModel], path: str, label: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(heading, model)`` for ``model`` and every section below it, depth first, each model once."""
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel], path: str, label: str) -> Iterator[tuple[str, type[BaseModel]]]:
        seen.add(model)
        yield (f"`{path}`{label}" if path else "top level"), model
        for key, field in model.model_fields.items():
            sub = f"{path}.{key}" if path else key
            sub += "[]" if typing.get_origin(field.annotation) is list else ""
            for tag, inner in models_in(field.annotation):
                if inner not in seen:
                    yield from walk(inner, sub, f" (name: {tag})" if tag else label)
    yield from walk(model, path, label)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference(root: type[BaseModel], intro: str) -> str:
    """Markdown: ``intro``, then one table (key, type, default, description) per section."""
    out = [intro.rstrip(), ""]
    for heading, model in sections(root, "", ""):
        out += [f"## {heading}", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, field in model.model_fields.items():
            out.append(f"| `{key}` | {cell(type_name(field.annotation))} | {default_text(field)} "
                       f"| {cell(field.description or '')} |")
        out.append("")
    return "\n".join(out)
