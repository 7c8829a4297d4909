"""The Open Inference Protocol (KServe V2) servicer: the same PredictionService as predserve's own API."""

from __future__ import annotations

from importlib import metadata

import grpc

from predserve.protos import grpc_predict_v2_pb2 as pb
from predserve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from predserve.server.api import v2_converters
from predserve.server.api.status import maps_errors
from predserve.server.services.prediction import PredictionService
from predserve.server.services.registry import ModelRegistryService

SERVER_NAME = "predserve"


def _installed_version() -> str:
    try:
        return metadata.version("predserve")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, prediction: PredictionService, registry: ModelRegistryService) -> None:
        self.prediction = prediction
        self.registry = registry
        self.server_version = _installed_version()

    @maps_errors
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @maps_errors
    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.prediction.server_ready())

    @maps_errors
    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        ready = self.prediction.is_ready(request.name, v2_converters.prediction_set_id(request.version))
        return pb.ModelReadyResponse(ready=ready)

    @maps_errors
    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.server_version)

    @maps_errors
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        description = self.prediction.describe(request.name, v2_converters.prediction_set_id(request.version))
        versions = self.registry.recent_versions(description.model_type)
        return v2_converters.model_metadata(description, versions)

    @maps_errors
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        # Describe first, then predict with that very model (resolved once), so the outputs checked are the
        # outputs computed.
        description = self.prediction.describe(
            request.model_name, v2_converters.prediction_set_id(request.model_version)
        )
        outputs = v2_converters.requested_outputs(request, description)
        assert description.model is not None
        result = self.prediction.answer(
            description.model,
            v2_converters.model_input(request, description.model.schema),
            include_probabilities=v2_converters.PREDICT_PROBA in outputs,
        )
        return v2_converters.infer_response(request, result, outputs)
