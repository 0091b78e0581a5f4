"""Consortium configuration: one TOML file describes who takes part and where their data lives.

The file is read by every role (coordinator, each participant node, tooling), so it is validated
strictly (unknown keys are errors) and every problem is reported as ONE line naming the file, the
dotted key (``participants[2].features.mapping.vat_amt``) and what is wrong. Relative
``data_dir`` paths are resolved against the folder of the TOML file, so a consortium folder can be
moved or copied as a whole.

Example (vertical)::

    name = "demo"
    mode = "vertical"
    as_of = "2024-12"

    [coordinator]
    name = "operator"
    superlink_address = "127.0.0.1:9092"
    gateway_address = "127.0.0.1:50051"

    [[participants]]
    name = "bank"
    kind = "bank"
    holds_labels = true
    lends = true
    scoring_address = "127.0.0.1:50061"
    data_dir = "bank"
    # identity_fingerprint = "<64 hex>"   # optional pin: ``fedscore identity show --state-dir DIR``
    [participants.features]
    schema = "bank"
    label_column = "default_month"
    [participants.features.mapping]
    credit_total = "inflow"        # own raw column -> standard raw field
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, TypeVar

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocols.errors import ConfigError
from protocols.feature_schemas import (
    ID_COLUMN,
    LABEL_LEDGER,
    MONTH_COLUMN,
    STANDARD_SCHEMAS,
    SchemaKind,
    month_index,
)


class FieldProblem(ValueError):
    """A validator's complaint about a sub-key of the model being validated.

    Pydantic reports model-level errors at the model's own location; carrying the relative key
    lets :func:`format_validation_error` point at the exact offending key.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


# ---------------------------------------------------------------------------------------------
# Small field types
# ---------------------------------------------------------------------------------------------

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def split_address(address: str, *, any_port: bool = False) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` -> (host, port); ValueError says what is wrong.
    ``any_port``: a listen address may give port 0 (the system picks a free one)."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"address {address!r} must be host:port")
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"address {address!r}: invalid IPv6 host") from None
        host = host[1:-1]
    elif not _HOSTNAME_RE.match(host):
        raise ValueError(f"address {address!r}: invalid host {host!r} (IPv6 goes in brackets)")
    lowest = 0 if any_port else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"address {address!r}: port must be an integer in {lowest}..65535")
    return host, int(port_text)


def check_address(address: str, what: str, *, any_port: bool = False) -> str:
    """``address`` unchanged when :func:`split_address` accepts it, else a ConfigError naming ``what``
    (gRPC would otherwise take an out-of-range port modulo 65536 and use another port)."""
    try:
        split_address(address, any_port=any_port)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return address


def _check_address(value: str) -> str:
    split_address(value)
    return value


def _check_month(value: str) -> str:
    try:
        month_index(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")


def _check_fingerprint(value: str) -> str:
    if not _FINGERPRINT_RE.fullmatch(value):
        raise ValueError(f"must be 64 lowercase hex characters, the SHA-256 fingerprint printed by "
                         f"'fedscore identity show' (got {len(value)} characters"
                         f"{', not all lowercase hex' if len(value) == 64 else ''})")
    return value


Address = Annotated[str, AfterValidator(_check_address)]
"""``host:port`` where a service listens (SuperLink, gateway, node, scoring responder)."""
MonthStr = Annotated[str, AfterValidator(_check_month)]
Fingerprint = Annotated[str, AfterValidator(_check_fingerprint)]
"""An Ed25519 identity fingerprint: hex SHA-256 of the raw public key (``crypto.identity.fingerprint_of``)."""
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
"""Participant / coordinator / consortium names: safe in file names, logs and Flower configs."""

ParticipantKind = Literal["bank", "tax", "platform", "utility", "other"]


# ---------------------------------------------------------------------------------------------
# Feature schema of one participant
# ---------------------------------------------------------------------------------------------


class FeatureSchemaConfig(BaseModel):
    """Which standard schema a participant's data follows and how its own columns map onto it.

    For a standard schema (bank/tax/platform/utility) ``mapping`` renames the participant's raw
    columns to the standard RAW field names; unmapped standard fields are expected under their
    standard names. For ``custom`` (real data sets with their own columns, one row per entity and
    no month axis) the features ARE the mapping's targets plus ``columns`` taken under their own
    names, in that order.
    """

    schema_: SchemaKind = Field(alias="schema")
    file: str | None = None
    """Records file inside ``data_dir``; defaults to the standard schema's file name."""
    id_column: str = ID_COLUMN
    id_format: Literal["uscc", "any"] = "uscc"
    """``any`` is for public data sets whose ids are not USCCs (they never meet real ids)."""
    month_column: str = MONTH_COLUMN
    mapping: dict[str, str] = Field(default_factory=dict)
    columns: list[str] = Field(default_factory=list)
    """custom only: raw columns used as features under their own names."""
    label_column: str | None = None
    label_file: str | None = None
    """File holding the label column; defaults to the bank ledger (standard) or ``file`` (custom)."""
    label_type: Literal["binary", "default_month"] | None = None
    """``binary``: 0/1 column. ``default_month``: YYYY-MM of default (blank = none), from which
    "default within 12 months after as-of" is derived. Defaults: bank -> default_month, custom ->
    binary."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def kind(self) -> str:
        return self.schema_

    @model_validator(mode="after")
    def _check(self) -> "FeatureSchemaConfig":
        seen: dict[str, str] = {}
        for raw, target in self.mapping.items():
            if target in seen:
                raise FieldProblem(f"mapping.{raw}",
                                   f"standard name {target!r} is already mapped from {seen[target]!r}")
            seen[target] = raw
        if self.schema_ == "custom":
            if self.file is None:
                raise FieldProblem("file", "a custom schema must name its records file")
            if not self.mapping and not self.columns:
                raise FieldProblem("mapping", "a custom schema needs feature columns "
                                              "(mapping and/or columns)")
            for i, column in enumerate(self.columns):
                if column in seen or column in self.mapping or self.columns.index(column) != i:
                    raise FieldProblem(f"columns[{i}]", f"column {column!r} is listed twice")
            for i, column in enumerate(self.columns):
                if column in (self.id_column, self.label_column):
                    raise FieldProblem(f"columns[{i}]", f"{column!r} is the id or label column")
            for raw in self.mapping:
                if raw in (self.id_column, self.label_column):
                    raise FieldProblem(f"mapping.{raw}", f"{raw!r} is the id or label column")
            if self.label_type == "default_month":
                raise FieldProblem("label_type", "custom data has no month axis: use 'binary'")
        else:
            standard = STANDARD_SCHEMAS[self.schema_]
            valid = standard.raw_field_names
            for raw, target in self.mapping.items():
                if target not in valid:
                    raise FieldProblem(
                        f"mapping.{raw}",
                        f"{target!r} is not a field of the {self.schema_} standard schema "
                        f"(expected one of {', '.join(valid)})",
                    )
            if self.columns:
                raise FieldProblem("columns", "only a custom schema lists feature columns")
            if self.label_column is not None and self.schema_ != "bank":
                raise FieldProblem("label_column",
                                   f"the {self.schema_} standard schema carries no labels")
        return self

    @property
    def records_file(self) -> str:
        if self.file is not None:
            return self.file
        return STANDARD_SCHEMAS[self.schema_].records_file

    @property
    def resolved_label_type(self) -> str | None:
        if self.label_column is None:
            return None
        if self.label_type is not None:
            return self.label_type
        return "binary" if self.schema_ == "custom" else "default_month"

    @property
    def resolved_label_file(self) -> str | None:
        if self.label_column is None:
            return None
        if self.label_file is not None:
            return self.label_file
        return self.records_file if self.schema_ == "custom" else LABEL_LEDGER.file

    def feature_names(self) -> list[str]:
        """Model feature names this participant produces."""
        if self.schema_ == "custom":
            return [*self.mapping.values(), *self.columns]
        return STANDARD_SCHEMAS[self.schema_].feature_names

    def raw_to_standard(self) -> dict[str, str]:
        """Rename table applied to the raw file (custom: feature columns keep their targets)."""
        return dict(self.mapping)


# ---------------------------------------------------------------------------------------------
# Roles
# ---------------------------------------------------------------------------------------------


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = "coordinator"
    superlink_address: Address
    """Flower SuperLink (Fleet API) address the SuperNodes connect to."""
    gateway_address: Address
    """Scoring gateway (gRPC) address lenders call."""


class ParticipantConfig(BaseModel):
    """One consortium member. A pure lender (``lends`` and no data) has no data_dir/features."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: ParticipantKind
    holds_labels: bool = False
    lends: bool = False
    node_address: Address | None = None
    """Where this member's Flower SuperNode listens (deployment mode only)."""
    scoring_address: Address | None = None
    """Where this member's scoring responder (gRPC) listens; None for a pure lender."""
    data_dir: Path | None = None
    features: FeatureSchemaConfig | None = None
    identity_fingerprint: Fingerprint | None = None
    """Pinned fingerprint of this member's long-term Ed25519 identity (``fedscore identity show``).
    When set, every holder refuses a relayed identity for this member that does not match it, and
    this member's own node refuses to run with another key. None: trusted on first use per run."""

    @field_validator("data_dir")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir") if info.context else None
        if value is not None and base is not None and not value.is_absolute():
            return (Path(base) / value).resolve()
        return value

    @model_validator(mode="after")
    def _check(self) -> "ParticipantConfig":
        if (self.data_dir is None) != (self.features is None):
            missing = "features" if self.features is None else "data_dir"
            raise FieldProblem(missing, "data_dir and features go together (both or neither)")
        if self.features is None:
            if not self.lends:
                raise FieldProblem("features", "a participant without data must be a lender")
            if self.holds_labels:
                raise FieldProblem("holds_labels", "a participant without data cannot hold labels")
            return self
        has_label = self.features.label_column is not None
        if self.holds_labels and not has_label:
            raise FieldProblem("features.label_column", "required when holds_labels = true")
        if has_label and not self.holds_labels:
            raise FieldProblem("features.label_column", "set but holds_labels is false")
        standard_kinds = {"bank", "tax", "platform", "utility"}
        if self.features.kind in standard_kinds and self.kind in standard_kinds \
                and self.features.kind != self.kind:
            raise FieldProblem("features.schema",
                               f"a {self.kind} participant cannot follow the "
                               f"{self.features.kind} standard schema")
        return self

    @property
    def holds_data(self) -> bool:
        return self.features is not None


class ConsortiumConfig(BaseModel):
    """The whole consortium. Build it with :func:`load_consortium` to get file-aware errors."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    mode: Literal["vertical", "horizontal"]
    description: str = ""
    as_of: MonthStr | None = None
    """Default as-of month (YYYY-MM) for features and labels; None = latest data month."""
    coordinator: CoordinatorConfig
    participants: list[ParticipantConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "ConsortiumConfig":
        seen: dict[str, int] = {}
        for i, p in enumerate(self.participants):
            if p.name in seen:
                raise FieldProblem(f"participants[{i}].name",
                                   f"duplicate participant name {p.name!r} "
                                   f"(also participants[{seen[p.name]}])")
            if p.name == self.coordinator.name:
                raise FieldProblem(f"participants[{i}].name",
                                   f"{p.name!r} is also the coordinator's name")
            seen[p.name] = i
        pinned: dict[str, int] = {}
        for i, p in enumerate(self.participants):
            if p.identity_fingerprint is None:
                continue
            if p.identity_fingerprint in pinned:
                raise FieldProblem(f"participants[{i}].identity_fingerprint",
                                   f"the same identity is pinned for participants[{pinned[p.identity_fingerprint]}]")
            pinned[p.identity_fingerprint] = i
        bound: dict[str, str] = {"coordinator.superlink_address": self.coordinator.superlink_address}
        for key, address in [("coordinator.gateway_address", self.coordinator.gateway_address)] + [
            (f"participants[{i}].{attr}", getattr(p, attr))
            for i, p in enumerate(self.participants)
            for attr in ("node_address", "scoring_address")
        ]:
            if address is None:
                continue
            clash = next((k for k, a in bound.items() if a == address), None)
            if clash is not None:
                raise FieldProblem(key, f"address {address} is already used by {clash}")
            bound[key] = address
        holders = [i for i, p in enumerate(self.participants) if p.holds_data]
        if not holders:
            raise FieldProblem("participants", "no participant holds data")
        label_holders = [i for i in holders if self.participants[i].holds_labels]
        if self.mode == "vertical":
            if len(label_holders) != 1:
                where = ", ".join(f"participants[{i}]" for i in label_holders) or "none"
                raise FieldProblem("participants",
                                   f"a vertical consortium needs exactly one label holder, "
                                   f"found {len(label_holders)} ({where})")
        else:
            first = holders[0]
            reference = self.participants[first].features.feature_names()  # type: ignore[union-attr]
            for i in holders:
                p = self.participants[i]
                if not p.holds_labels:
                    raise FieldProblem(f"participants[{i}].holds_labels",
                                       "every data holder of a horizontal consortium trains on "
                                       "its own labels")
                if p.features.feature_names() != reference:  # type: ignore[union-attr]
                    raise FieldProblem(f"participants[{i}].features",
                                       f"features differ from participants[{first}]: a horizontal "
                                       "consortium shares one schema")
        return self

    # -- helpers ---------------------------------------------------------------------------

    @property
    def data_holders(self) -> list[ParticipantConfig]:
        return [p for p in self.participants if p.holds_data]

    @property
    def label_holders(self) -> list[ParticipantConfig]:
        return [p for p in self.participants if p.holds_labels]

    @property
    def label_holder(self) -> ParticipantConfig:
        """The single label holder of a vertical consortium (first one in a horizontal one)."""
        return self.label_holders[0]

    @property
    def lenders(self) -> list[ParticipantConfig]:
        return [p for p in self.participants if p.lends]

    def participant(self, name: str) -> ParticipantConfig:
        for p in self.participants:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.participants)
        raise ConfigError(f"consortium {self.name!r}: no participant {name!r} (known: {known})")


# ---------------------------------------------------------------------------------------------
# Loading / dumping
# ---------------------------------------------------------------------------------------------


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: ``source: key: problem`` (first error; the count of any others)."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    problem_exc = (first.get("ctx") or {}).get("error")
    if isinstance(problem_exc, FieldProblem):
        key = _dotted(loc)
        if problem_exc.key:
            key = f"{key}.{problem_exc.key}" if key and not problem_exc.key.startswith("[") \
                else f"{key}{problem_exc.key}"
        problem = problem_exc.problem
    else:
        key = _dotted(loc)
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        elif first["type"] == "missing":
            problem = "required key is missing"
        elif problem.startswith("Value error, "):
            problem = problem[len("Value error, "):]
        if first["type"] not in ("missing", "extra_forbidden", "value_error") \
                and "input" in first and isinstance(first["input"], (str, int, float, bool)):
            problem = f"{problem} (got {first['input']!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    line = f"{source}: {key or '<root>'}: {problem}{more}"
    return " ".join(line.split())


_Settings = TypeVar("_Settings", bound=BaseModel)


def validate_settings(model: type[_Settings], data: Mapping[str, Any], what: str = "run config") -> _Settings:
    """Validate a flat key/value config (Flower run config, plan overrides) into ``model``.

    The first problem becomes a :class:`ConfigError` ``what: key: problem``, the one line an
    operator needs; the coordinator and participants word their run-config errors alike.
    """
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{what}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def parse_widths(text: str, key: str) -> tuple[int, ...]:
    """Hidden-layer widths ``"32,16"`` -> ``(32, 16)``; anything but positive integers is a ConfigError naming ``key``."""
    try:
        widths = tuple(int(h) for h in str(text).split(",") if h.strip())
    except ValueError:
        widths = (0,)
    if any(w < 1 for w in widths):
        raise ConfigError(f"{key} {text!r} must be comma-separated positive integers")
    return widths


def parse_consortium(data: dict[str, Any], *, source: str = "<config>",
                     base_dir: Path | None = None) -> ConsortiumConfig:
    """Validate an already-parsed mapping; ConfigError names ``source`` and the key."""
    try:
        return ConsortiumConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_consortium(path: str | os.PathLike[str]) -> ConsortiumConfig:
    """Read and validate a consortium TOML file (relative data_dir resolved against its folder)."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: consortium file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory, expected a consortium TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: TOML syntax error: {exc}") from None
    return parse_consortium(data, source=str(file), base_dir=file.resolve().parent)


def consortium_to_dict(cfg: ConsortiumConfig, *, base_dir: Path | None = None) -> dict[str, Any]:
    """Plain TOML-ready mapping (None dropped; data_dir relative to ``base_dir`` when possible)."""
    data = cfg.model_dump(mode="json", by_alias=True, exclude_none=True)
    for p_data, p in zip(data["participants"], cfg.participants):
        if p.data_dir is not None:
            p_data["data_dir"] = _relative(p.data_dir, base_dir)
        features = p_data.get("features")
        if features is not None:
            for key in ("mapping", "columns"):
                if not features.get(key):
                    features.pop(key, None)
            for key, default in (("id_column", ID_COLUMN), ("month_column", MONTH_COLUMN),
                                 ("id_format", "uscc")):
                if features.get(key) == default:
                    features.pop(key)
        for key in ("holds_labels", "lends"):
            if p_data.get(key) is False:
                p_data.pop(key)
    if not data.get("description"):
        data.pop("description", None)
    return data


def _relative(path: Path, base_dir: Path | None) -> str:
    if base_dir is None or not path.is_absolute():
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, base_dir.resolve())).as_posix()
    except ValueError:  # different drive
        return path.as_posix()


def dump_consortium(cfg: ConsortiumConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as TOML; data_dir is written relative to the file's folder when possible."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    data = consortium_to_dict(cfg, base_dir=file.parent)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(file)
    return file
