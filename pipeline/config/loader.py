"""params.yaml read once, safely, and each section validated by its own schema.

A stage loads only the sections it reads (``load_sections(path, clean=CleanParams)``), so its
code depends on those schemas alone and DVC reruns it only when they change; the flow and the
tools validate the whole file (``pipeline.config.params``). Every error is one line:
``params.yaml: section.key: what is wrong; fix that key``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from pipeline.runtime.errors import UserError
from pipeline.runtime.project import DEFAULT_PARAMS

Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Model = TypeVar("Model", bound=BaseModel)

def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (``bool``, or a union or alias holding it)."""
    return annotation is bool or any(_takes_bool(arg) for arg in get_args(annotation))


class Section(BaseModel):
    # inf and nan are refused everywhere: a learning rate of .inf trains a NaN model
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `epochs: true` as 1; YAML's true/yes/on are never meant as numbers
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and not _takes_bool(field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is a boolean, where a "
                                     "number or name is due")
        return data


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _AliasError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win), and
    anchors and aliases (``&name``, ``*name``): DVC reads params.yaml too, with a loader of
    its own, and a few nested aliases expand to billions of nodes (an "alias bomb") there."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise _AliasError(None, None, f"YAML {kind}{event.anchor} is not allowed",
                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKeyError(None, None, f"key {key!r} is given twice",
                                         key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Sections(Section):
    # the sections a stage asked for; the rest of the file is another stage's business
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


def read_yaml(path: Path) -> dict[str, Any]:
    """params.yaml as plain data, or a one-line ``UserError`` naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repository root or pass --params") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a params file; pass --params params.yaml") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: byte {err.start} is not UTF-8 text; save the file as UTF-8") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """``text`` (the content of ``path``, or what is about to be) as plain data, by the same
    rules as :func:`read_yaml`: duplicate keys, anchors and aliases refused in one line."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKeyError as err:
        mark = err.problem_mark
        raise UserError(f"{path}: line {mark.line + 1 if mark else '?'}: {err.problem}; keep "
                        "one of them") from None
    except _AliasError as err:
        mark = err.problem_mark
        raise UserError(f"{path}: line {mark.line + 1 if mark else '?'}: {err.problem} (DVC "
                        "reads this file too, and aliases can expand without bound); write the "
                        "values out") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML; fix the syntax there") from None
    return raw or {}


def _where(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def validate(path: Path, model: type[Model], raw: dict[str, Any]) -> Model:
    """``raw`` as ``model``, or a one-line ``UserError`` naming the first wrong key."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: {_where(first)}: {message}{more}; fix that key") from None


def load_sections(path: Path = DEFAULT_PARAMS, **sections: Any) -> Any:
    """The named top-level sections of params.yaml, each validated by its schema (a section
    model, or ``int`` for ``seed``), as attributes: ``load_sections(p, seed=int).seed``."""
    model = create_model("Sections", __base__=_Sections,
                         **{name: (schema, ...) for name, schema in sections.items()})
    return validate(path, model, read_yaml(path))
