"""Adaptations as jobs (lookalike_gateway.jobs): the service, and its REST routes and gRPC forms.

REST: ``POST /v1/adaptations`` answers 202 + ``Location: /v1/adaptations/jobs/{id}``; GET that for the
state, progress and, once done, the result (collection built, activated or why the gate refused, the
report). ``GET /v1/adaptations/latest`` is the newest adaptation's report (kept on disk).
gRPC: ``StartAdaptation`` / ``GetAdaptation`` on lookalike.v1.Lookalike (grpc_api.py).
"""
from __future__ import annotations

import json

import grpc
from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lookalike.v1 import lookalike_pb2

from .adaptation import Adapter, labeller
from .core import ApiError
from .jobs import Job, JobRunner, JobState, job_json, job_proto

JOB_KIND = "adaptation"


class AdaptationService:
    def __init__(self, gateway):
        self.gateway = gateway
        self.jobs = JobRunner(JOB_KIND, describe="an adaptation")

    def start(self, request: lookalike_pb2.StartAdaptationRequest) -> Job:
        """Checks the arguments (FAILED_PRECONDITION for an unknown label field), then starts the job."""
        if not request.plain:
            labeller(request.label_field)
        return self.jobs.start(lambda progress: Adapter(self.gateway).run(request, progress), stage="starting")

    def job(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def latest_report(self) -> dict:
        report = self.gateway.catalogue.adaptations.latest_report()
        if report is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "no adaptation has run yet")
        return report

    def close(self) -> None:
        self.jobs.close()


def get_response(job: Job) -> lookalike_pb2.GetAdaptationResponse:
    response = lookalike_pb2.GetAdaptationResponse(job=job_proto(job))
    if job.state == JobState.SUCCEEDED and job.result:
        r = job.result
        response.result.CopyFrom(lookalike_pb2.AdaptationResult(
            source=r["source"], collection=r["collection"], activated=r["activated"], previous=r["previous"],
            refused=r["refused"], regressions=r["regressions"], report_json=json.dumps(r["report"])))
    return response


class AdaptBody(BaseModel):
    """POST /v1/adaptations; every field optional (an empty body adapts on product groups and activates)."""
    model_config = ConfigDict(extra="forbid")
    label_field: str = Field("product", description="'product', 'category' or 'attributes.<name>'")
    activate: bool = Field(True, description="switch searches to the adapted collection when the gate passes")
    force: bool = Field(False, description="activate even when a held-out figure got worse")
    plain: bool = Field(False, description="back to the plain space (a collection of the raw vectors)")


def job_location(job: Job) -> str:
    return f"/v1/adaptations/jobs/{job.id}"


def build_router(service: AdaptationService) -> APIRouter:
    router = APIRouter(tags=["adaptation"])

    @router.post("/v1/adaptations", status_code=202)
    def start(body: AdaptBody | None = Body(None)):
        """Starts an adaptation as a job and answers at once: 202 with the job and its `Location`. The job
        learns a projection of the stored embeddings on the catalogue's own photos (label: the product, or a
        field), measures it on held-out photos and products and -- unless a figure gets worse -- builds an
        adapted collection from the stored vectors and switches searches to it. 409 while a reindex or
        another adaptation runs."""
        body = body or AdaptBody()
        job = service.start(lookalike_pb2.StartAdaptationRequest(
            label_field=body.label_field, activate=body.activate, force=body.force, plain=body.plain))
        return JSONResponse(job_json(job), status_code=202, headers={"Location": job_location(job)})

    @router.get("/v1/adaptations/jobs/{job_id}")
    def adaptation_job(job_id: str):
        """An adaptation job: state, progress 0..1, the stage, and its result once it succeeded
        (`collection`, `activated`, `refused`, `regressions`, `report`)."""
        return job_json(service.job(job_id))

    @router.get("/v1/adaptations/latest")
    def latest():
        """The newest adaptation's report (activated or refused)."""
        return service.latest_report()

    return router
