"""Config plumbing shared by every task: the strict pydantic base, image sizes, YAML files, secrets in logs."""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


def parse_hw(value: Any) -> tuple[int, int]:
    """224 -> (224, 224); '224x336' / [224, 336] -> (224, 336) as (height, width)."""
    if isinstance(value, int):
        return parse_hw([value, value])
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"image size must be N or HxW, got {value!r}") from None
        return parse_hw(nums[0] if len(nums) == 1 else nums)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        hw = (int(value[0]), int(value[1]))
        if min(hw) <= 0:
            raise ValueError(f"image size must be positive (height and width >= 1), got {hw[0]}x{hw[1]}")
        return hw
    raise ValueError(f"image size must be N or HxW, got {value!r}")


class Strict(BaseModel):
    """Unknown fields are errors (a typo in a YAML file must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML config file ({} without a file); errors name the file."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def check_multiple(field: str, hw: tuple[int, int], patch: int, patch_field: str) -> None:
    """ValueError unless both sides of `hw` are multiples of `patch`; the message gives the nearest valid sizes."""
    bad = [(side, n) for side, n in zip(("height", "width"), hw) if n % patch]
    if bad:
        near = "; ".join(f"{side} {n} -> " + " or ".join(str(m) for m in (n // patch * patch, (n // patch + 1) * patch)
                                                          if m > 0) for side, n in bad)
        raise ValueError(f"{field} {hw[0]}x{hw[1]} must be a multiple of {patch_field} {patch} (nearest valid: "
                         f"{near})")


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The (nested) pydantic model that holds the field at `loc` (list indices and dict keys skipped)."""
    for key in loc[:-1]:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue  # an index into a list/dict of models
        sub = _submodel(field.annotation)
        if sub is None:
            return None
        model = sub
    return model


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (sub := _submodel(arg)) is not None:
            return sub
    return None


def _describe(model: type[BaseModel], e: ValidationError) -> str:
    """Every bad field by its dotted name: an unknown one with the closest known name, a bad value with its input."""
    out = []
    for err in e.errors():
        loc = err["loc"]
        name = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc)
            known = sorted(owner.model_fields) if owner else []
            close = get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else
                                     f" (known: {', '.join(known)})" if known else "")
        elif err["type"] != "missing" and "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        out.append(f"{name}: {msg}" if name else msg)
    return "; ".join(out)


def validate_config(model: type[BaseModel], data: dict[str, Any], path: str | Path | None = None) -> BaseModel:
    """`model` from `data`; errors name the file (if any) and every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        where = f"config file {path}" if path else "config"
        raise ValueError(f"{where}: {_describe(model, e)}") from None


def merged_config_data(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML file's mapping with the overrides that were given (None = not given) on top."""
    data = read_config_file(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def load_config(model: type[BaseModel], path: str | Path | None = None, **overrides: Any) -> BaseModel:
    """Build a config from an optional YAML file plus overrides (None = not given); errors name the file and field."""
    return validate_config(model, merged_config_data(path, overrides), path)


_SECRET_WORDS = ("secret", "password", "token", "key", "credential", "session")


def redact(options: Any) -> Any:
    """A copy of fsspec storage options safe to log or store: values of credential-like keys become '***'."""
    if isinstance(options, dict):
        return {k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, (dict, list))
                else redact(v) for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    return options


def safe_url(url: str) -> str:
    """Drop user:password@ from a URL before it is stored or logged."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url
