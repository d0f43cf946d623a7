"""The classifier's transports: lookalike.v1.Classification (gRPC) and the /v1/classify,
/v1/classifiers REST routes, over a ClassifierService."""
from __future__ import annotations

import threading
import time

import grpc
from fastapi import APIRouter, Body, File, Form, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lookalike.v1 import classifier_pb2, classifier_pb2_grpc

from .classifier import DEFAULT_LABEL_FIELD, TRAIN_TIMEOUT_S, ClassifierService
from .core import ApiError, Deadline
from .grpc_api import GatewayServicer, _unary
from .jobs import Job, JobState, job_json, job_proto


def report_proto(report: dict) -> classifier_pb2.TrainClassifierResponse:
    labels = report.get("labels", [])
    return classifier_pb2.TrainClassifierResponse(
        version=report.get("version", ""), model_id=report.get("model_id", ""),
        label_field=report.get("label_field", ""), labels=labels,
        train_size=report.get("train_size", 0), test_size=report.get("test_size", 0),
        accuracy=report.get("accuracy", 0.0), cv_accuracy=report.get("cv_accuracy", 0.0), c=report.get("c", 0.0),
        per_class=[classifier_pb2.ClassMetrics(**m) for m in report.get("per_class", [])],
        seconds=report.get("seconds", 0.0), created_at=report.get("created_at", ""),
        skipped_labels=report.get("skipped_labels", {}), unlabeled=report.get("unlabeled", 0),
        confusion=[int(v) for row in report.get("confusion", []) for v in row])


def training_arguments(request: classifier_pb2.TrainClassifierRequest) -> tuple:
    """ClassifierService.start_training's arguments from a TrainClassifierRequest."""
    return (request.label_field or DEFAULT_LABEL_FIELD,
            request.holdout_fraction if request.HasField("holdout_fraction") else None,
            list(request.c_values) or None,
            request.min_examples_per_label if request.HasField("min_examples_per_label") else None)


class ClassificationServicer(GatewayServicer, classifier_pb2_grpc.ClassificationServicer):
    """lookalike.v1.Classification over a ClassifierService."""

    def __init__(self, service: ClassifierService, auth, draining: threading.Event | None = None):
        super().__init__(service.gateway, auth, draining)
        self.service = service

    @_unary
    def Classify(self, request, context, deadline):
        top_k = request.top_k if request.HasField("top_k") else None
        predictions, cache_hit, version = self.service.classify(request.image, top_k, deadline)
        return classifier_pb2.ClassifyResponse(
            predictions=[classifier_pb2.Prediction(label=label, probability=p) for label, p in predictions],
            cache_hit=cache_hit, classifier_version=version)

    @_unary
    def TrainClassifier(self, request, context, deadline):
        remaining = context.time_remaining()  # training may take longer than the usual request deadline
        wait_s = TRAIN_TIMEOUT_S if remaining is None else min(remaining - 0.5, TRAIN_TIMEOUT_S)
        return report_proto(self.service.train(*training_arguments(request), wait_s=max(0.0, wait_s)))

    @_unary
    def StartClassifierTraining(self, request, context, deadline):
        job = self.service.start_training(*training_arguments(request.training))
        return classifier_pb2.StartClassifierTrainingResponse(job=job_proto(job))

    @_unary
    def GetClassifierTraining(self, request, context, deadline):
        job = self.service.training_job(request.job_id)
        response = classifier_pb2.GetClassifierTrainingResponse(job=job_proto(job))
        if job.state == JobState.SUCCEEDED and job.result:
            response.report.CopyFrom(report_proto(job.result))
        return response

    @_unary
    def GetClassifier(self, request, context, deadline):
        return classifier_pb2.GetClassifierResponse(classifier=report_proto(self.service.current_report()))


SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classification"].full_name  # lookalike.v1.Classification


def add_to_host(host, service: ClassifierService, auth, draining: threading.Event | None = None) -> None:
    """Registers lookalike.v1.Classification on the gateway's ServiceHost (health and reflection list it)."""
    host.add(classifier_pb2_grpc.add_ClassificationServicer_to_server,
             ClassificationServicer(service, auth, draining), SERVICE_NAME)


# ---- REST -----------------------------------------------------------------------------------------

class TrainBody(BaseModel):
    """POST /v1/classifiers; every field optional (an empty body trains on `category`)."""
    model_config = ConfigDict(extra="forbid")
    label_field: str = Field(DEFAULT_LABEL_FIELD, description="'category' or 'attributes.<name>'")
    holdout_fraction: float | None = Field(None, description="held-out part, [0, 0.5); default 0.2")
    c_values: list[float] | None = Field(None, description="candidate C values; the default grid when unset")
    min_examples_per_label: int | None = Field(None, description="labels with fewer examples are left out (5)")


def job_location(job: Job) -> str:
    return f"/v1/classifiers/jobs/{job.id}"


def training_json(job: Job) -> dict:
    return job_json(job, result_key="report")


def build_router(service: ClassifierService) -> APIRouter:
    settings = service.gateway.settings
    router = APIRouter(tags=["classification"])

    async def read_image(upload: UploadFile | None) -> bytes:
        if upload is None:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "multipart field 'image' is required")
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        if declared and not declared.startswith("image/") and declared != "application/octet-stream":
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"content type {declared!r} is not an image type",
                           http_status=415)
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"image is above the limit of {settings.max_upload_bytes} bytes", http_status=413)
        return data

    @router.post("/v1/classify")
    async def classify(image: UploadFile | None = File(None), top_k: int | None = Form(None)):
        """The active classifier's labels for the uploaded photo (multipart `image`), most probable first."""
        data = await read_image(image)
        started = time.perf_counter()
        predictions, cache_hit, version = await run_in_threadpool(
            service.classify, data, top_k, Deadline(settings.request_timeout_s))
        return {"predictions": [{"label": label, "probability": round(p, 6)} for label, p in predictions],
                "cache_hit": cache_hit, "classifier_version": version,
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @router.post("/v1/classifiers", status_code=202)
    def train(body: TrainBody | None = Body(None)):
        """Starts training a classifier on the stored embeddings (an empty body: labels from `category`)
        as a job and answers at once: 202 with the job and its `Location`
        (GET /v1/classifiers/jobs/{job_id}: state, progress, and the report once done). The trained
        classifier becomes the active one. 409 while another training runs."""
        body = body or TrainBody()
        job = service.start_training(body.label_field, body.holdout_fraction, body.c_values,
                                     body.min_examples_per_label)
        return JSONResponse(training_json(job), status_code=202, headers={"Location": job_location(job)})

    @router.get("/v1/classifiers/jobs/{job_id}")
    def training_job(job_id: str):
        """A training job: state (queued, running, succeeded, failed), progress 0..1, the stage, and
        the training report once it succeeded (or the error once it failed)."""
        return training_json(service.training_job(job_id))

    @router.get("/v1/classifiers/current")
    def current():
        """The active classifier's training report."""
        return service.current_report()

    @router.get("/v1/classifiers")
    def versions():
        """Stored classifier versions (oldest first) and the active one."""
        return service.list_versions()

    return router
