"""Read a pydantic model from a Zarr node's attributes, with errors that name the node, attribute and field."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def field_errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors())


def read_attr_model(attrs, attr: str, model: type[M], where: str = "root attribute", missing_hint: str = "") -> M:
    """`model` parsed from `attrs[attr]`; ValueError "<where> '<attr>' is missing|invalid: ..." otherwise."""
    raw = attrs.get(attr)
    if raw is None:
        raise ValueError(f"{where} '{attr}' is missing{missing_hint}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{where} '{attr}' is invalid: {field_errors(e)}") from None


def read_node_attr_model(group, path: str, attr: str, model: type[M]) -> M:
    """`read_attr_model` on the attributes of the node at `path` below `group` ("<path>: group is missing" if absent)."""
    try:
        node = group[path]
    except KeyError:
        raise ValueError(f"{path}: group is missing") from None
    return read_attr_model(node.attrs, attr, model, where=f"{path}: attribute")
