"""Open Inference Protocol (KServe V2) REST wire types. Only the wire format lives here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "42",
                "inputs": [
                    {
                        "name": "text",
                        "shape": [2],
                        "datatype": "BYTES",
                        "data": ["我的快递到哪了", "怎么申请退款"],
                    }
                ],
            }
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ErrorResponse(BaseModel):
    error: str


class ReadyResponse(BaseModel):
    name: str | None = None
    ready: bool


class LiveResponse(BaseModel):
    live: bool


# ── multi-model inference (this worker's extension `multi_model_infer`, POST /v2/multi/infer) ─────────


class ModelRef(BaseModel):
    name: str
    version: str | None = None  # None: the highest version serving


class MultiInferenceRequest(BaseModel):
    """One text input for several models: the texts travel once and are tokenised once per vocabulary."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["我的快递到哪了"]}],
                "models": [{"name": "intent", "version": "2"}, {"name": "sentiment"}, {"name": "faq"}],
            }
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    models: list[ModelRef] = Field(min_length=1, max_length=8)


class ModelFailure(BaseModel):
    """One model's failure inside a multi-model answer: the status its own infer endpoint would answer."""

    model_name: str
    model_version: str | None = None
    status: int
    error: str


class MultiInferenceResponse(BaseModel):
    id: str | None = None
    results: list[InferenceResponse | ModelFailure]  # in the order of the request's `models`
