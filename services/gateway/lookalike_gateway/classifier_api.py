"""The classifier's transports: lookalike.v1.Classification (gRPC) and the /v1/classify,
/v1/classifiers REST routes, over a ClassifierService."""
# no `from __future__ import annotations`: the route signatures use Annotated metadata built at run time

import threading
import time
from typing import Annotated

from fastapi import APIRouter, Body, File, Form, Path, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lookalike import limits
from lookalike.v1 import classifier_pb2, classifier_pb2_grpc

from . import api_models as m
from . import http_errors
from .classifier import DEFAULT_LABEL_FIELD, TRAIN_TIMEOUT_S, ClassifierService
from .errors import Deadline
from .grpc_api import GatewayServicer, unary_rpc
from .jobs import Job, JobState, job_json, job_proto


def report_proto(report: dict) -> classifier_pb2.ClassifierReport:
    """A stored report (the classifier's meta.json, a dict) as its message; absent keys read as unset."""
    labels = report.get("labels", [])
    return classifier_pb2.ClassifierReport(
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
        super().__init__(service.settings, auth, draining)
        self.service = service

    @unary_rpc
    def Classify(self, request, context, deadline):
        top_k = request.top_k if request.HasField("top_k") else None
        predictions, cache_hit, version = self.service.classify(
            request.image, top_k, deadline, request.crop if request.HasField("crop") else None)
        return classifier_pb2.ClassifyResponse(
            predictions=[classifier_pb2.Prediction(label=label, probability=p) for label, p in predictions],
            cache_hit=cache_hit, classifier_version=version)

    @unary_rpc
    def TrainClassifier(self, request, context, deadline):
        remaining = context.time_remaining()  # training may take longer than the usual request deadline
        wait_s = TRAIN_TIMEOUT_S if remaining is None else min(remaining - 0.5, TRAIN_TIMEOUT_S)
        report = self.service.train(*training_arguments(request), wait_s=max(0.0, wait_s))
        return classifier_pb2.TrainClassifierResponse(report=report_proto(report))

    @unary_rpc
    def StartClassifierTraining(self, request, context, deadline):
        job = self.service.start_training(*training_arguments(request.training))
        return classifier_pb2.StartClassifierTrainingResponse(job=job_proto(job))

    @unary_rpc
    def GetClassifierTraining(self, request, context, deadline):
        job = self.service.training_job(request.job_id)
        response = classifier_pb2.GetClassifierTrainingResponse(job=job_proto(job))
        if job.state == JobState.SUCCEEDED and job.result:
            response.report.CopyFrom(report_proto(job.result))
        return response

    @unary_rpc
    def GetClassifier(self, request, context, deadline):
        return classifier_pb2.GetClassifierResponse(classifier=report_proto(self.service.current_report()))


SERVICE_NAME = classifier_pb2.DESCRIPTOR.services_by_name["Classification"].full_name  # lookalike.v1.Classification


def add_to_host(host, service: ClassifierService, auth, draining: threading.Event | None = None) -> None:
    """Registers lookalike.v1.Classification on the gateway's ServiceHost (health and reflection list it)."""
    host.add(classifier_pb2_grpc.add_ClassificationServicer_to_server,
             ClassificationServicer(service, auth, draining), SERVICE_NAME)


# ---- REST -----------------------------------------------------------------------------------------

def job_location(job: Job) -> str:
    return f"/v1/classifiers/jobs/{job.id}"


def training_json(job: Job) -> dict:
    return job_json(job, result_key="report")


def build_router(service: ClassifierService) -> APIRouter:
    settings = service.settings
    router = APIRouter(tags=["classification"])
    image_doc = f"the photo (at most {settings.max_upload_bytes} bytes)"

    @router.post("/v1/classify", response_model=m.ClassifyResponse, responses=m.errors(400, 404, 413, 415, 504),
                 dependencies=[http_errors.DECLARED_FORM_FIELDS_ONLY])
    async def classify(image: Annotated[UploadFile, File(description=image_doc)],
                       top_k: Annotated[int | None, Form(ge=1, le=limits.MAX_TOP_K, description=(
                           f"labels (default {limits.DEFAULT_CLASSIFY_TOP_K}, at most the number of labels)"))] = None,
                       crop: Annotated[str | None, Form(pattern=m.CROP_PATTERN, description=m.CROP_DOC)] = None):
        """The active classifier's labels for the uploaded photo (multipart `image`), or a region of it
        (`crop`), most probable first (404 before any training; 400 when it was trained on another model's
        embeddings)."""
        data = await http_errors.read_image(image, settings.max_upload_bytes)
        started = time.perf_counter()
        predictions, cache_hit, version = await run_in_threadpool(
            service.classify, data, top_k, Deadline(settings.request_timeout_s), crop)
        return {"predictions": [{"label": label, "probability": round(p, 6)} for label, p in predictions],
                "cache_hit": cache_hit, "classifier_version": version,
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @router.post("/v1/classifiers", status_code=202, response_model=m.ClassifierTrainingJob,
                 responses={202: {"headers": {"Location": {"description": "the job (GET it for progress)",
                                                           "schema": {"type": "string"}}}},
                            **m.errors(400, 409, 413)})
    def train(body: Annotated[m.TrainRequest | None, Body()] = None):
        """Starts training a classifier on the stored embeddings (an empty body: labels from `category`)
        as a job and answers at once: 202 with the job and its `Location`
        (GET /v1/classifiers/jobs/{job_id}: state, progress, and the report once done). The trained
        classifier becomes the active one. 409 while another training runs."""
        body = body or m.TrainRequest()
        job = service.start_training(body.label_field, body.holdout_fraction, body.c_values,
                                     body.min_examples_per_label)
        return JSONResponse(training_json(job), status_code=202, headers={"Location": job_location(job)})

    @router.get("/v1/classifiers/jobs/{job_id}", response_model=m.ClassifierTrainingJob,
                responses=m.errors(400, 404))
    def training_job(job_id: Annotated[str, Path(max_length=200)]):
        """A training job: state (queued, running, succeeded, failed), progress 0..1, the stage, and
        the training report once it succeeded (or the error once it failed)."""
        return training_json(service.training_job(job_id))

    @router.get("/v1/classifiers/current", response_model=m.ClassifierReport, responses=m.errors(404))
    def current():
        """The active classifier's training report."""
        return service.current_report()

    @router.get("/v1/classifiers", response_model=m.ClassifierVersions, responses=m.errors())
    def versions():
        """Stored classifier versions (oldest first) and the active one."""
        return service.list_versions()

    return router
