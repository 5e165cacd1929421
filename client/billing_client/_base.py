"""The base of the generated models."""
from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Fields by their Python names or the wire's camelCase; fields this version does not know are ignored."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, extra="ignore")
