"""What every spec shares: frozen, no unknown fields, and one rule for its content id.

A spec's content id names the work it asks for: two specs with the same id are one
piece of work (a set is reused, a second submit joins the active job). Each spec type
sorts its fields into three tuples, and `content_id` hashes only the first two:

- ID_FIELDS: the fields that name the work (change one, get other data);
- ID_FIELDS_IF_SET: fields that joined the id after ids were in use: hashed only when not
  at their default, so every id made before they existed stays valid;
- RUN_FIELDS: how to run it (device, workers, batch sizes): never hashed.

tests/test_specs.py fails when a spec has a field in none (or two) of them, so a new
field can neither silently reuse a stale result nor silently change every id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from saefeat.errors import SpecError
from saefeat.paths import SAFE_ID, check_id

ID_DIGITS = 16  # hex digits of sha256 kept in an id


def _one_path_part(value: str) -> str:
    try:
        return check_id(value, "id")
    except SpecError as e:  # pydantic names the field; the message suffices
        raise ValueError(e.message) from None


# Every field that names an activation set or an SAE: each becomes a folder name under
# the server's own folders, so never a path. Not `as-<hex>`/`sae-<hex>`: imported SAEs
# keep the id their importer chose (`saefeat import --id`), and stored ids stay valid.
Id = Annotated[
    str,
    AfterValidator(_one_path_part),
    Field(json_schema_extra={"pattern": f"^{SAFE_ID.pattern}$", "maxLength": 128}),
]


def content_id(prefix: str, payload: str | dict[str, Any], digits: int = ID_DIGITS) -> str:
    """`prefix-<sha256 hex>` of a string, or of a dict as sorted JSON."""
    if not isinstance(payload, str):
        payload = json.dumps(payload, sort_keys=True)
    return f"{prefix}-{hashlib.sha256(payload.encode()).hexdigest()[:digits]}"


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ID_PREFIX: ClassVar[str] = ""
    ID_FIELDS: ClassVar[tuple[str, ...]] = ()
    ID_FIELDS_IF_SET: ClassVar[tuple[str, ...]] = ()
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ()

    def id_data(self) -> dict[str, Any]:
        """The fields that name the work, as JSON values."""
        data = self.model_dump(include=set(self.ID_FIELDS), mode="json")
        for name in self.ID_FIELDS_IF_SET:
            value = getattr(self, name)
            if value != type(self).model_fields[name].get_default(call_default_factory=True):
                data[name] = self.model_dump(include={name}, mode="json")[name]
        return data

    def content_id(self) -> str:
        return content_id(self.ID_PREFIX, self.id_data())
