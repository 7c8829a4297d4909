"""Translation between Open Inference Protocol (V2) messages and numpy / the services' plain values.

V2 names a model and a version; predserve serves model types and prediction sets. The model name is the
model type and the version is the prediction set id (empty: the current set).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from predserve.protos import grpc_predict_v2_pb2 as pb
from predserve.server.domain import ColumnType, Schema, TargetValue
from predserve.server.errors import InvalidArgument
from predserve.server.services.input_tables import InputColumn, InputTable, NumberColumn, StringColumn
from predserve.server.services.prediction import ModelDescription, PredictionResult

PLATFORM = "sklearn"
INPUT_NAME = "features"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

# Raw contents are little-endian whatever the host, per the specification.
INPUT_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
# The InferTensorContents field that carries each datatype's typed values.
CONTENTS_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents"}
OUTPUT_DTYPES = {"INT64": np.dtype("<i8"), "FP64": np.dtype("<f8")}
# One input per column (MLServer's pandas codec): the datatypes of a number column, BOOL read as 0 and 1.
COLUMN_DTYPES: dict[str, np.dtype] = {**INPUT_DTYPES, "BOOL": np.dtype("?")}
COLUMN_CONTENTS_FIELDS = {**CONTENTS_FIELDS, "BOOL": "bool_contents"}
# The request's parameters.content_type: "pd" is one input per column, "np" the single matrix.
PANDAS_CONTENT, NUMPY_CONTENT = "pd", "np"
# An input's parameters.content_type under which MLServer sends a string column holding missing values: each
# element is JSON, a string or null.
PANDAS_JSON_CONTENT = "pd_json"

_VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")


def prediction_set_id(version: str) -> int:
    """The V2 version as a prediction set id; 0 (the current set) when empty."""
    if not version:
        return 0
    if not _VERSION_PATTERN.fullmatch(version):
        raise InvalidArgument(
            f"model version {version!r} is not a prediction set id: give a positive integer, or no version "
            "for the current set"
        )
    return int(version)


def label_datatype(classes: Sequence[TargetValue] | None) -> str:
    """BYTES for string class labels, INT64 for integer ones, FP64 for anything else (regressors)."""
    if classes and all(isinstance(label, str) for label in classes):
        return "BYTES"
    if classes and all(isinstance(label, int) and not isinstance(label, bool) for label in classes):
        return "INT64"
    return "FP64"


def output_names(description: ModelDescription) -> list[str]:
    return [PREDICT, PREDICT_PROBA] if description.gives_probabilities else [PREDICT]


def model_metadata(description: ModelDescription, versions: Sequence[int]) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    outputs = [tensor(name=PREDICT, datatype=label_datatype(description.classes), shape=[-1])]
    if description.gives_probabilities:
        outputs.append(tensor(name=PREDICT_PROBA, datatype="FP64", shape=[-1, len(description.classes or ())]))
    return pb.ModelMetadataResponse(
        name=description.model_type,
        versions=[str(version) for version in versions],
        platform=PLATFORM,
        inputs=metadata_inputs(description),
        outputs=outputs,
        parameters={
            "runtime": pb.InferParameter(string_param=description.runtime),
            "runtime_version": pb.InferParameter(string_param=description.runtime_version),
            "runtime_rows_checked": pb.InferParameter(int64_param=description.runtime_rows_checked),
            "runtime_max_deviation": pb.InferParameter(double_param=description.runtime_max_deviation),
        },
    )


def metadata_inputs(description: ModelDescription) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    """A numbers-only matrix model: one [rows, n_features] FP64 input, as always. A typed model: one input per
    column, named as the column, FP64 for numbers and BYTES for strings (MLServer's pandas convention)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    schema = description.model.schema if description.model is not None else None
    if schema is None or schema.numeric:
        return [tensor(name=INPUT_NAME, datatype="FP64", shape=[-1, len(description.feature_names)])]
    return [
        tensor(name=column.name, datatype="FP64" if column.type is ColumnType.NUMBER else "BYTES", shape=[-1])
        for column in schema.columns
    ]


def requested_outputs(request: pb.ModelInferRequest, description: ModelDescription) -> list[str]:
    """The outputs to compute, in the order asked for; every output of the model when none is named."""
    available = output_names(description)
    if not request.outputs:
        return available
    names: list[str] = []
    for output in request.outputs:
        if output.name not in available:
            raise InvalidArgument(
                f"model {description.model_type!r} has no output {output.name!r}; it gives {', '.join(available)}"
            )
        if output.name in names:
            raise InvalidArgument(f"output {output.name!r} is requested twice")
        if "classification" in output.parameters:
            raise InvalidArgument(
                f"output {output.name!r}: the classification extension is not supported; "
                f"ask for {PREDICT!r} and {PREDICT_PROBA!r}"
            )
        names.append(output.name)
    return names


def model_input(request: pb.ModelInferRequest, schema: Schema) -> np.ndarray | InputTable:
    """The single [rows, n_features] tensor as a matrix, or one input per column as a table.

    Without a content_type, one 2-D input of numbers (not [rows, 1]) is the matrix; the inputs of a typed model
    otherwise are its columns, and so are those of a numbers-only model when each is named as one of its columns.
    """
    content_type = _string_parameter(request.parameters, "content_type")
    if content_type not in ("", PANDAS_CONTENT, NUMPY_CONTENT):
        raise InvalidArgument(
            f"content_type {content_type!r} is not supported: use {PANDAS_CONTENT!r} (one input per column) or "
            f"{NUMPY_CONTENT!r} (one [rows, n_features] input)"
        )
    if content_type == PANDAS_CONTENT or (content_type == "" and _by_column(request, schema)):
        return input_table(request)
    return feature_matrix(request)


def _by_column(request: pb.ModelInferRequest, schema: Schema) -> bool:
    inputs = request.inputs
    if not inputs:
        return False
    shape = list(inputs[0].shape)
    if len(inputs) == 1 and len(shape) == 2 and shape[1] != 1 and inputs[0].datatype != "BYTES":
        return False
    return not schema.numeric or all(schema.column(tensor.name) is not None for tensor in inputs)


def _string_parameter(parameters: Mapping[str, pb.InferParameter], name: str) -> str:
    return parameters[name].string_param if name in parameters else ""


def input_table(request: pb.ModelInferRequest) -> InputTable:
    """One input per column, named as the column, shape [rows] or [rows, 1]: FP64, FP32, INT64, INT32 or BOOL
    for numbers (NaN: missing), BYTES for strings (UTF-8; with the input's content_type "pd_json" each element
    is JSON, null for a missing value, as MLServer sends a string column with missing values)."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries for {len(request.inputs)} inputs"
        )
    return InputTable.of([_column(request, index, tensor) for index, tensor in enumerate(request.inputs)])


def _column(request: pb.ModelInferRequest, index: int, tensor: pb.ModelInferRequest.InferInputTensor) -> InputColumn:
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise InvalidArgument(f"input {tensor.name!r} has shape {shape}; a column is [rows] or [rows, 1]")
    count = shape[0]
    raw = request.raw_input_contents[index] if request.raw_input_contents else None
    if raw is not None and tensor.contents.ListFields():
        raise InvalidArgument(f"input {tensor.name!r} has typed contents as well as raw_input_contents; send one")
    if tensor.datatype == "BYTES":
        return _string_column(tensor, raw, count)
    dtype = COLUMN_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; a column is one of "
            f"{', '.join(COLUMN_DTYPES)} for numbers, or BYTES for strings"
        )
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input {tensor.name!r}: raw contents hold {len(raw)} bytes; "
                f"shape {shape} in {tensor.datatype} needs {count * dtype.itemsize}"
            )
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = np.array(_only_field(tensor, COLUMN_CONTENTS_FIELDS[tensor.datatype], count), dtype=dtype)
    return NumberColumn(tensor.name, values.astype(np.float64))


def _only_field(tensor: pb.ModelInferRequest.InferInputTensor, field: str, count: int) -> Sequence[object]:
    others = [descriptor.name for descriptor, _ in tensor.contents.ListFields() if descriptor.name != field]
    if others:
        raise InvalidArgument(
            f"input {tensor.name!r} is {tensor.datatype}, whose values go in contents.{field}; got {', '.join(others)}"
        )
    values: Sequence[object] = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: contents.{field} holds {len(values)} values; "
            f"shape {list(tensor.shape)} needs {count}"
        )
    return values


def _string_column(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, count: int) -> StringColumn:
    elements = _only_field(tensor, "bytes_contents", count) if raw is None else _split_bytes(tensor.name, raw, count)
    as_json = _string_parameter(tensor.parameters, "content_type") == PANDAS_JSON_CONTENT
    values: list[str] = []
    missing: list[int] = []
    for row, element in enumerate(elements):
        assert isinstance(element, bytes)
        try:
            text = element.decode()
            value = json.loads(text) if as_json else text
        except (UnicodeDecodeError, ValueError):
            kind = "JSON" if as_json else "UTF-8 text"
            raise InvalidArgument(f"input {tensor.name!r}, row {row}: {element[:40]!r} is not {kind}") from None
        if value is None:
            missing.append(row)
            value = ""
        elif not isinstance(value, str):
            raise InvalidArgument(f"input {tensor.name!r}, row {row}: {value!r} is neither a string nor null")
        values.append(value)
    return StringColumn(tensor.name, values, missing)


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """BYTES raw contents: each element a 4-byte little-endian length, then its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input {name!r}: raw BYTES contents end inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"input {name!r}: raw BYTES element {len(elements)} runs past the contents")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise InvalidArgument(f"input {name!r}: raw contents hold {len(elements)} elements; shape needs {count}")
    return elements


def feature_matrix(request: pb.ModelInferRequest) -> np.ndarray:
    """The one input tensor as a [rows, n_features] float64 matrix, read from raw or typed contents."""
    if len(request.inputs) != 1:
        raise InvalidArgument(f"expected exactly one input tensor [rows, n_features], got {len(request.inputs)}")
    tensor = request.inputs[0]
    dtype = INPUT_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; use one of {', '.join(INPUT_DTYPES)}"
        )
    shape = list(tensor.shape)
    if len(shape) != 2 or min(shape) < 0:
        raise InvalidArgument(f"input {tensor.name!r} has shape {shape}; expected [rows, n_features]")
    count = shape[0] * shape[1]
    if request.raw_input_contents:
        values = _raw_values(request, tensor, dtype, count)
    else:
        values = _typed_values(tensor, dtype, count)
    # FP64 raw contents reach the service without a copy; other datatypes are converted once.
    return values.reshape(shape).astype(np.float64, copy=False)


def _raw_values(
    request: pb.ModelInferRequest, tensor: pb.ModelInferRequest.InferInputTensor, dtype: np.dtype, count: int
) -> np.ndarray:
    if len(request.raw_input_contents) != 1:
        raise InvalidArgument(f"raw_input_contents holds {len(request.raw_input_contents)} entries for 1 input tensor")
    if tensor.contents.ListFields():
        raise InvalidArgument(f"input {tensor.name!r} has typed contents as well as raw_input_contents; send one")
    raw = request.raw_input_contents[0]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input {tensor.name!r}: raw contents hold {len(raw)} bytes; "
            f"shape {list(tensor.shape)} in {tensor.datatype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype)


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor, dtype: np.dtype, count: int) -> np.ndarray:
    field = CONTENTS_FIELDS[tensor.datatype]
    others = [descriptor.name for descriptor, _ in tensor.contents.ListFields() if descriptor.name != field]
    if others:
        raise InvalidArgument(
            f"input {tensor.name!r} is {tensor.datatype}, whose values go in contents.{field}; got {', '.join(others)}"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: contents.{field} holds {len(values)} values; "
            f"shape {list(tensor.shape)} needs {count}"
        )
    return np.fromiter(values, dtype=dtype, count=count)


def infer_response(
    request: pb.ModelInferRequest, result: PredictionResult, outputs: Sequence[str]
) -> pb.ModelInferResponse:
    """Outputs in the form the request used: raw bytes when its input was raw, typed contents otherwise."""
    response = pb.ModelInferResponse(
        model_name=result.model_type, model_version=str(result.prediction_set_id), id=request.id
    )
    raw = bool(request.raw_input_contents)
    for name in outputs:
        datatype, values = _output_values(name, result)
        tensor = response.outputs.add(name=name, datatype=datatype, shape=_shape(values))
        if raw:
            response.raw_output_contents.append(_raw_bytes(values))
        else:
            _fill_contents(tensor.contents, datatype, values)
    return response


def _output_values(name: str, result: PredictionResult) -> tuple[str, np.ndarray | list[str]]:
    if name == PREDICT_PROBA:
        assert result.probabilities is not None, "probabilities are computed whenever predict_proba is requested"
        return "FP64", np.ascontiguousarray(result.probabilities, dtype=OUTPUT_DTYPES["FP64"])
    datatype = label_datatype(result.classes)
    if datatype == "BYTES":
        return datatype, [str(value) for value in result.values]
    return datatype, np.asarray(result.values, dtype=OUTPUT_DTYPES[datatype])


def _shape(values: np.ndarray | list[str]) -> list[int]:
    return list(values.shape) if isinstance(values, np.ndarray) else [len(values)]


def _raw_bytes(values: np.ndarray | list[str]) -> bytes:
    if isinstance(values, np.ndarray):
        return values.tobytes()
    # BYTES elements: a 4-byte little-endian length, then the UTF-8 text.
    encoded = [value.encode() for value in values]
    return b"".join(struct.pack("<I", len(item)) + item for item in encoded)


def _fill_contents(contents: pb.InferTensorContents, datatype: str, values: np.ndarray | list[str]) -> None:
    if isinstance(values, list):
        contents.bytes_contents.extend(value.encode() for value in values)
    elif datatype == "INT64":
        contents.int64_contents.extend(values.ravel().tolist())
    else:
        contents.fp64_contents.extend(values.ravel().tolist())
