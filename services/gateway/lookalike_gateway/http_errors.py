"""REST errors: every error answer is `{"error": {"code", "message", "details"}}` (api_models.ErrorBody),
whatever raised it (an ApiError, a request FastAPI could not validate, an unknown path or method), and
image uploads are read here for every route that takes one."""
from __future__ import annotations

import grpc
from fastapi import Depends, FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lookalike import status

from .errors import ApiError


def error_response(code: grpc.StatusCode, message: str, http: int | None = None, headers: dict | None = None,
                   details: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code.name, "message": message, "details": details or []}},
                        status_code=http or status.http_status(code), headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    details = exc.all_details()
    retry = next((d["retry_delay_s"] for d in details if d.get("type") == "RetryInfo"), None)
    headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else None
    return error_response(exc.code, exc.message, exc.http_status, headers, details)


def validation_error(exc: RequestValidationError) -> ApiError:
    """A request FastAPI could not validate, as INVALID_ARGUMENT with one field violation per problem."""
    parts, violations = [], []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form"))
        message = str(err.get("msg"))
        parts.append(f"{where}: {message}" if where else message)
        violations.append({"field": where or "body", "description": message})
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(parts) or "invalid request",
                    details=[{"type": "BadRequest", "field_violations": violations}] if violations else [])


METHOD_NOT_ALLOWED = "method_not_allowed"  # the name of routes that only answer 405


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """The methods of the path template this path matches first (for a 405's `Allow`): what the
    routes with that template answer."""
    routes = [r for r in app.router.routes if getattr(r, "name", "") != METHOD_NOT_ALLOWED]
    for route in routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE and hasattr(route, "path_format"):
            template = route.path_format
            return sorted({m for r in routes if getattr(r, "path_format", None) == template
                           for m in (getattr(r, "methods", None) or ())})
    return []


def install(app: FastAPI) -> None:
    """The exception handlers that turn every failure into the error body."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        return api_error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:
            allow = allowed_methods(app, request.scope)
            return error_response(grpc.StatusCode.UNIMPLEMENTED,
                                  f"{request.method} is not allowed on this path; allowed: {', '.join(allow)}",
                                  http=405, headers={"Allow": ", ".join(allow)})
        if exc.status_code == 404:
            return error_response(grpc.StatusCode.NOT_FOUND, f"no such path: {request.url.path}", http=404)
        return error_response(status.grpc_status(exc.status_code), str(exc.detail), http=exc.status_code,
                              headers=getattr(exc, "headers", None))


def declared_form_fields_only(repeatable: frozenset[str] = frozenset()):
    """A route dependency refusing multipart fields the route does not declare (the spec says
    additionalProperties: false: a misspelt field is an error, not silently ignored) and fields given twice
    (which one counts?) other than the `repeatable` ones (PUT /v1/products/{id}: one `image` per photo)."""
    async def check(request: Request) -> None:
        await _declared_form_fields_only(request, repeatable)
    return Depends(check)


async def _declared_form_fields_only(request: Request, repeatable: frozenset[str] = frozenset()) -> None:
    route = request.scope.get("route")
    declared = {field.alias for field in getattr(getattr(route, "dependant", None), "body_params", ())}
    form = await request.form()
    names = [name for name, _ in form.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1} & (declared - repeatable))
    if repeated:
        message = f"form field(s) {', '.join(map(repr, repeated))} given more than once"
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, message,
                       details=[{"type": "BadRequest", "field_violations": [
                           {"field": name, "description": "given more than once"} for name in repeated]}])
    unknown = sorted(set(names) - declared)
    if unknown:
        message = f"unknown form field(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(declared))}"
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, message,
                       details=[{"type": "BadRequest", "field_violations": [
                           {"field": name, "description": "unknown field"} for name in unknown]}])


DECLARED_FORM_FIELDS_ONLY = declared_form_fields_only()  # dependencies=[...] of multipart routes


async def read_image(upload: UploadFile, max_bytes: int) -> bytes:
    """The bytes of a multipart `image` field: 415 for a declared non-image type, 413 above `max_bytes`."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared and not declared.startswith("image/") and declared != "application/octet-stream":
        message = f"content type {declared!r} is not an image type"
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, http_status=415,
                       details=[status.bad_request("image", message)])
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        message = f"image is above the limit of {max_bytes} bytes"
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, http_status=413,
                       details=[status.bad_request("image", message)])
    return data
