"""CLI options built from a spec's fields: the flag, type and help (the field's
description, its allowed values and default) come from the spec, so a field is
described once and the CLI, the OpenAPI schema and the spec cannot disagree.

Every option's CLI default is None: a flag left out takes the spec's own default, so the
CLI restates none of them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Annotated

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

KEYWORD = inspect.Parameter.KEYWORD_ONLY


def option_type(annotation) -> type:
    """The CLI type of a field: its own, without None; a list or tuple is a repeated
    option; a Literal is a str (the spec checks it, so a bad value is one line naming
    the field)."""
    if typing.get_origin(annotation) is typing.Literal:
        return str
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (tuple, list):
        return list[args[0]]
    if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:
        return str
    kind = args[0] if args else annotation
    # An optional constrained type (`Id | None`): its base type; the spec checks the rest.
    return typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind


def field_help(field: FieldInfo, owners: list[str] | None = None) -> str:
    where = f"{', '.join(owners)}; " if owners else ""
    literal = field.annotation
    if typing.get_origin(literal) is not typing.Literal:
        literal = next((a for a in typing.get_args(literal)
                        if typing.get_origin(a) is typing.Literal), None)  # fmt: skip
    if literal is not None:
        where += f"one of {', '.join(map(str, typing.get_args(literal)))}; "
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    shown = "" if default is None or isinstance(default, BaseModel) else f"default {default}"
    return f"{field.description or ''} ({where}{shown})".replace(" ()", "").replace("; )", ")")


def field_option(name: str, field: FieldInfo, *flags: str, help: str | None = None,
                 required: bool = False) -> inspect.Parameter:  # fmt: skip
    """The option for one field: `--the-name` unless `flags` are given."""
    option = typer.Option(*(flags or (f"--{name.replace('_', '-')}",)),
                          help=help if help is not None else field_help(field))  # fmt: skip
    kind = option_type(field.annotation)
    if required:
        return inspect.Parameter(name, KEYWORD, annotation=Annotated[kind, option])
    return inspect.Parameter(name, KEYWORD, default=None, annotation=Annotated[kind | None, option])


Flags = dict[str, tuple[str, ...]]  # field -> its flags, where not `--the-name`


def spec_options(spec_type: type[BaseModel], names: typing.Iterable[str],
                 flags: Flags | None = None) -> list[inspect.Parameter]:  # fmt: skip
    """An option per named field; a field with no default is a required option."""
    flags = flags or {}
    fields = spec_type.model_fields
    return [field_option(n, fields[n], *flags.get(n, ()), required=fields[n].is_required())
            for n in names]  # fmt: skip


def given(options: dict) -> dict:
    """The options the user gave (the rest take the spec's defaults)."""
    return {k: v for k, v in options.items() if v is not None}


def command(fn: Callable, params: list[inspect.Parameter]) -> Callable:
    """`fn(**options)` as a typer command whose options are `params`."""
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {}
    return fn
