"""Adaptations as jobs (lookalike_gateway.jobs): the service, and its REST routes and gRPC forms.

REST: ``POST /v1/adaptations`` answers 202 + ``Location: /v1/adaptations/jobs/{id}``; GET that for the
state, progress and, once done, the result (collection built, activated or why the gate refused, the
report). ``GET /v1/adaptations/latest`` is the newest adaptation's report (kept on disk).
gRPC: ``StartAdaptation`` / ``GetAdaptation`` on lookalike.v1.Lookalike (grpc_api.py).
"""
# no `from __future__ import annotations`: the route signatures use Annotated metadata at run time
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from fastapi.responses import JSONResponse

from lookalike.v1 import lookalike_pb2

from . import api_models as m
from .adaptation import Adapter, labeller
from .collection_manager import CollectionManager
from .errors import not_found
from .jobs import Job, JobRunner, JobState, job_json, job_proto
from .search_client import SearchClient

JOB_KIND = "adaptation"


class AdaptationService:
    """Adaptations of the active collection as jobs, one at a time (an Adapter each, over `search` and
    `collections`)."""

    def __init__(self, search: SearchClient, collections: CollectionManager):
        self.search = search
        self.collections = collections
        self.jobs = JobRunner(JOB_KIND, describe="an adaptation")

    def start(self, request: lookalike_pb2.StartAdaptationRequest) -> Job:
        """Checks the arguments (FAILED_PRECONDITION for an unknown label field), then starts the job."""
        if not request.plain:
            labeller(request.label_field)
        adapter = Adapter(self.search, self.collections)
        return self.jobs.start(lambda progress: adapter.run(request, progress), stage="starting")

    def job(self, job_id: str) -> Job:
        return self.jobs.get(job_id)

    def latest_report(self) -> dict:
        report = self.collections.adaptations.latest_report()
        if report is None:
            raise not_found("adaptation", "latest", "no adaptation has run yet")
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


def job_location(job: Job) -> str:
    return f"/v1/adaptations/jobs/{job.id}"


def build_router(service: AdaptationService) -> APIRouter:
    router = APIRouter(tags=["adaptation"])

    @router.post("/v1/adaptations", status_code=202, response_model=m.AdaptationJob,
                 responses={202: {"headers": {"Location": {"description": "the job (GET it for progress)",
                                                           "schema": {"type": "string"}}}},
                            **m.errors(400, 409, 413)})
    def start(body: Annotated[m.AdaptRequest | None, Body()] = None):
        """Starts an adaptation as a job and answers at once: 202 with the job and its `Location`. The job
        learns a projection of the stored embeddings on the catalogue's own photos (label: the product, or a
        field), measures it on held-out photos and products and -- unless a figure gets worse -- builds an
        adapted collection from the stored vectors and switches searches to it. 409 while a reindex or
        another adaptation runs."""
        body = body or m.AdaptRequest()
        job = service.start(lookalike_pb2.StartAdaptationRequest(
            label_field=body.label_field, activate=body.activate, force=body.force, plain=body.plain))
        return JSONResponse(job_json(job), status_code=202, headers={"Location": job_location(job)})

    @router.get("/v1/adaptations/jobs/{job_id}", response_model=m.AdaptationJob, responses=m.errors(400, 404))
    def adaptation_job(job_id: Annotated[str, Path(max_length=200)]):
        """An adaptation job: state, progress 0..1, the stage, and its result once it succeeded
        (`collection`, `activated`, `refused`, `regressions`, `report`)."""
        return job_json(service.job(job_id))

    @router.get("/v1/adaptations/latest", response_model=dict[str, Any], responses=m.errors(404))
    def latest():
        """The newest adaptation's report (activated or refused)."""
        return service.latest_report()

    return router
