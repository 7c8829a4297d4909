"""The predserve.v1.Predserve servicer: convert the request, call a service, convert the result."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from predserve.protos import predserve_pb2 as pb
from predserve.protos import predserve_pb2_grpc as pb_grpc
from predserve.server.api import converters
from predserve.server.api.status import maps_errors
from predserve.server.api.streams import IdleStreamReaper
from predserve.server.services.history import HistoryService
from predserve.server.services.importing import ModelImportService
from predserve.server.services.lifecycle import ModelLifecycleService
from predserve.server.services.prediction import PredictionService
from predserve.server.services.registry import ModelRegistryService
from predserve.server.services.training import ModelTrainingService


class PredserveServicer(pb_grpc.PredserveServicer):
    def __init__(
        self,
        training: ModelTrainingService,
        prediction: PredictionService,
        registry: ModelRegistryService,
        history: HistoryService,
        lifecycle: ModelLifecycleService,
        importer: ModelImportService,
        streams: IdleStreamReaper,
    ) -> None:
        self.training = training
        self.prediction = prediction
        self.registry = registry
        self.history = history
        self.lifecycle = lifecycle
        self.importer = importer
        self.streams = streams

    @maps_errors
    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> pb.TrainResponse:
        outcome = self.training.train(converters.train_command(request, context.is_active), context.time_remaining())
        return converters.train_response(outcome.registration, outcome.persist_seconds)

    @maps_errors
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        result = self.prediction.predict(
            request.model_type,
            converters.predict_input(request),
            request.prediction_set_id,
            request.include_probabilities,
        )
        return converters.predict_response(result)

    @maps_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        views = self.registry.list_models()
        return pb.ListModelsResponse(models=[converters.model_status(view) for view in views])

    @maps_errors
    def ListPredictionSets(
        self, request: pb.ListPredictionSetsRequest, context: grpc.ServicerContext
    ) -> pb.ListPredictionSetsResponse:
        page = self.registry.list_prediction_sets(
            request.model_type, request.page_size, request.page_token, converters.set_filter(request)
        )
        return converters.list_prediction_sets_response(page)

    @maps_errors
    def IngestHistory(
        self, request_iterator: Iterator[pb.IngestHistoryRequest], context: grpc.ServicerContext
    ) -> pb.IngestHistoryResponse:
        upload = converters.ingest_upload(self.streams.watch(request_iterator, context), self.history.max_rows)
        return converters.ingest_response(self.history.ingest_upload(upload))

    @maps_errors
    def Promote(self, request: pb.PromoteRequest, context: grpc.ServicerContext) -> pb.PromoteResponse:
        if request.rollback_model_type:
            promotion = self.lifecycle.rollback(request.rollback_model_type)
        else:
            promotion = self.lifecycle.promote(request.prediction_set_id)
        return converters.promote_response(promotion)

    @maps_errors
    def ImportModel(
        self, request_iterator: Iterator[pb.ImportModelRequest], context: grpc.ServicerContext
    ) -> pb.TrainResponse:
        command = converters.import_command(self.streams.watch(request_iterator, context), self.importer.max_bytes)
        return converters.train_response(self.importer.import_model(command))

    @maps_errors
    def GarbageCollect(
        self, request: pb.GarbageCollectRequest, context: grpc.ServicerContext
    ) -> pb.GarbageCollectResponse:
        collection = self.lifecycle.collect_garbage(request.keep, request.dry_run, request.model_type)
        return converters.garbage_collect_response(collection)

    @maps_errors
    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.ListDatasetsResponse:
        return converters.list_datasets_response(self.history.list_datasets())
