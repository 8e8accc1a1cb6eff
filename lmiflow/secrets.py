"""Where a secret in a config lives, and the one place it is turned into its value.

A config never holds a secret as a plain string that travels with it. `serving.secret_options`
maps a serving.properties key to a reference: a Prefect `Secret` block (`{secret_block: NAME}`),
an environment variable of the runner (`{env: NAME}`), or a literal (`{value: ...}` or a bare
string) kept as a `SecretStr`. Prefect stores flow parameters as JSON, where a `SecretStr`
becomes `**********`, so a literal serves only runs that read the config file themselves
(the CLI, the redeploy-from-config flow); a run whose config is a flow parameter names a block
or a variable. Everything lmiflow prints, reports or uploads is rendered with the value masked; the
value is resolved at staging time only, written to a file of mode 0600 in a 0700 directory
(local) or to the S3 prefix (SageMaker), and registered with lmiflow.redact so that it is masked
wherever else it could surface.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from lmiflow import patterns
from lmiflow.errors import UserInputError
from lmiflow.redact import MASK, register_secret

# How pydantic (and so Prefect's stored parameters) writes a SecretStr.
PYDANTIC_MASK = "**********"


class SecretRef(BaseModel):
    """Exactly one of: a Prefect Secret block's name, an environment variable, a literal."""

    model_config = ConfigDict(extra="forbid", strict=True)

    secret_block: str | None = Field(default=None, description="Prefect Secret block name.")
    env: str | None = Field(default=None, description="Environment variable of the runner.")
    value: SecretStr | None = Field(default=None, description="The secret itself.")

    @model_validator(mode="before")
    @classmethod
    def _bare_string_is_a_literal(cls, data: object) -> object:
        if isinstance(data, str | SecretStr):
            return {"value": data if isinstance(data, SecretStr) else SecretStr(data)}
        if isinstance(data, dict) and isinstance(data.get("value"), str):
            return {**data, "value": SecretStr(data["value"])}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("secret_block", "env", "value") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of secret_block, env, value")
        block = self.secret_block
        if block is not None and not patterns.matches(patterns.BLOCK_NAME, block):
            raise ValueError("secret_block: a Prefect block name (lower-case letters, digits, -)")
        if self.env is not None and not patterns.matches(patterns.ENV_KEY, self.env):
            raise ValueError("env: an environment variable name (letters, digits, _)")
        if self.value is not None:
            text = self.value.get_secret_value()
            if not text:
                raise ValueError("value: empty")
            register_secret(text)
        return self

    def describe(self) -> str:
        """What the reference is, without its value (for plans and reports)."""
        if self.secret_block is not None:
            return f"Prefect Secret block {self.secret_block!r}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return "literal (masked)"

    def resolve(self, field: str) -> str:
        """The secret's value, registered for redaction. UserInputError names `field`."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise UserInputError(field, f"environment variable {self.env} is not set")
        elif self.secret_block is not None:
            value = _load_block(self.secret_block, field)
        else:
            value = self.value.get_secret_value()  # type: ignore[union-attr]
            if value == PYDANTIC_MASK:
                raise UserInputError(field, "a literal secret arrives masked in a run started "
                                            "from Prefect (parameters are stored as JSON): use "
                                            "secret_block instead")
        if patterns.has_control(value):
            raise UserInputError(field, "the secret holds a line break or control character")
        register_secret(value)
        return value


def _load_block(name: str, field: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as exc:
        raise UserInputError(field, f"no Prefect Secret block named {name!r} ({exc})") from None
    if not isinstance(value, str):
        raise UserInputError(field, f"Prefect Secret block {name!r} does not hold a string")
    return value


def check_env_refs(refs: Mapping[str, SecretRef], prefix: str) -> None:
    """Environment references can be checked before anything starts (blocks need the API)."""
    for key, ref in refs.items():
        if ref.env is not None and not os.environ.get(ref.env):
            raise UserInputError(f"{prefix}.{key}", f"environment variable {ref.env} is not set")


def masked_entries(refs: Mapping[str, SecretRef]) -> dict[str, str]:
    """The entries as every printed or reported copy of serving.properties shows them."""
    return {key: MASK for key in refs}


def fill_properties(text: str, refs: Mapping[str, SecretRef], prefix: str) -> str:
    """serving.properties with each secret entry's real value: only for the staged file."""
    from lmiflow.serving.properties import check_value
    from lmiflow.serving.properties_text import parse_entries, render_entries

    if not refs:
        return text
    entries = parse_entries(text)
    for key, ref in refs.items():
        value = ref.resolve(f"{prefix}.{key}")
        try:
            check_value(key, value)
        except ValueError:
            raise UserInputError(f"{prefix}.{key}", "the secret cannot be written to "
                                 "serving.properties (backslash, spaces or non-ASCII)") from None
        entries[key] = value
    return render_entries(entries)
