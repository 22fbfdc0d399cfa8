"""The Open Inference Protocol's request and answer bodies, for the OpenAPI document.

The infer route reads its body by hand (it may be JSON followed by binary tensor data, and
decoding it with a model would cost per request), so these models only describe it: FastAPI
renders them into the OpenAPI schema, and the tests check that the codec accepts what they
describe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.v2.codec import DTYPES, INPUT_NAME, OUTPUT_NAME

Datatype = Literal[tuple(DTYPES)]  # type: ignore[valid-type]


class InputParameters(BaseModel):
    """Parameters of an input tensor."""

    binary_data_size: int | None = Field(
        None, ge=0, description="Bytes of this tensor in the binary data after the JSON.")


class InputTensor(BaseModel):
    """One input tensor: JSON ``data`` (row-major, flat or nested) or binary data."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": INPUT_NAME, "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]})

    name: str = Field(examples=[INPUT_NAME])
    shape: list[int] = Field(description="Dimensions, the batch first.")
    datatype: Datatype
    data: list | None = Field(None, description="Row-major values, flat or nested.")
    parameters: InputParameters | None = None


class OutputParameters(BaseModel):
    """Parameters of a requested output."""

    binary_data: bool | None = Field(None, description="Answer this output as binary data.")


class RequestedOutputSpec(BaseModel):
    """An output the client asks for."""

    name: str = Field(examples=[OUTPUT_NAME])
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    """Parameters of the whole request."""

    binary_data_output: bool | None = Field(
        None, description="Answer every output as binary data unless it says otherwise.")


class InferenceRequest(BaseModel):
    """An inference request (its JSON part, with the binary extension)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "42",
        "inputs": [{"name": INPUT_NAME, "shape": [1, 64], "datatype": "FP32",
                    "data": [0] * 64}]}]})

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutputSpec] | None = None


class OutputTensor(BaseModel):
    """One output tensor of an answer."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict | None = None


class InferenceResponse(BaseModel):
    """An inference answer."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    """A model's input or output tensor, -1 for the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """A model's versions, platform and tensors."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """The server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class ErrorBody(BaseModel):
    """Every V2 error: the message tritonclient shows."""

    error: str
