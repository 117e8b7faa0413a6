"""Number fields take numbers. Pydantic's lax mode reads JSON true / false as 1 / 0 for an int or float field,
which the OpenAPI schema ("type": "number") does not allow; schemathesis found `false` accepted for
image_cfg_scale and hr_resize_y. `NumbersOnly` refuses booleans (also inside a list of numbers) with a 422
naming the field; `text_numbers = False` refuses text too (the JSON-only A1111 routes: A1111 clients send
numbers), while the native routes keep it, since a multipart form carries every number as text.
"""
from __future__ import annotations

import json
import typing
from typing import ClassVar

from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

NOT_A_NUMBER = "not_a_number"  # the pydantic error type errors.validation_error words the fix for


def numeric(annotation) -> bool:
    """int or float, also inside Optional / Union / list / Annotated (but not bool)."""
    if annotation in (int, float):
        return True
    return any(numeric(argument) for argument in typing.get_args(annotation))


class NumbersOnly(BaseModel):
    text_numbers: ClassVar[bool] = True  # a number may come as text ("2"): multipart forms

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value, info: ValidationInfo):
        if not numeric(cls.model_fields[info.field_name].annotation):
            return value
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or (isinstance(item, str) and not cls.text_numbers):
                raise PydanticCustomError(NOT_A_NUMBER, "a number is needed, not {given}", {"given": json.dumps(item)})
        return value
