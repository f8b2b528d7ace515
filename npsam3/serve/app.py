"""The HTTP API (versioned JSON under /v1, OpenAPI docs at /docs) and the browser page at /.

    POST /v1/images?name=photo.jpg   body: the image file's bytes -> {"id", "width", "height", ...}
    POST /v1/images/{id}/concept     {"prompt", "exemplars", "threshold", "nms_iou", "presence"}
    POST /v1/images/{id}/object      {"points", "box", "mask_input", "multimask", "fill_holes"}
    GET  /v1/images/{id}   GET /v1/model   GET /v1/health (the one endpoint without the token)

Concept and object answers are the JSON of ``npsam3 segment`` / ``npsam3 object``
(npsam3/results.py) with "image_id" and "detector_ran" or "prediction" added. Every error is
``{"error": "<one line>"}`` with its 4xx status (503 + Retry-After when the queue is full).
"""

import asyncio
import hmac
import os
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal, Optional

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import Npsam3Error
from ..results import json_bytes
from .engine import Busy, Engine
from .store import NotFound

STATIC = Path(__file__).resolve().parent / "static"
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
               "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")
MB = 1 << 20
UPLOAD_SECONDS = 120  # an upload that takes longer is cut off (408), freeing its slot

MAX_COORDINATE = 1e9  # pixels; beyond any image side, within float32
Coordinate = Annotated[FiniteFloat, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Box = Annotated[list[Coordinate], Field(min_length=4, max_length=4,
                                        description="pixels [x0, y0, x1, y1]")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Exemplar(Strict):
    box: Box
    positive: bool = True


class ConceptRequest(Strict):
    prompt: Optional[str] = Field(None, max_length=1000, examples=["a dog"])
    exemplars: list[Exemplar] = Field([], max_length=64)
    threshold: float = Field(0.5, ge=0, le=1)
    nms_iou: Optional[float] = Field(None, ge=0, le=1, description="mask-IoU NMS (off: null)")
    presence: bool = True


class Point(Strict):
    xy: Annotated[list[Coordinate], Field(min_length=2, max_length=2, description="pixels [x, y]")]
    label: Literal[0, 1] = 1


class MaskInput(Strict):
    prediction: str = Field(max_length=20, description='a previous answer\'s "prediction"')
    mask: int = Field(0, ge=0, description="which of its masks")


class ObjectRequest(Strict):
    points: list[Point] = Field([], max_length=64)
    box: Optional[Box] = None
    mask_input: Optional[MaskInput] = None
    multimask: bool = False
    fill_holes: bool = True


class ApiError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


def error(status, message, headers=None):
    return JSONResponse({"error": message}, status, headers=headers)


def json_response(obj):
    return Response(json_bytes(obj, indent=None), media_type="application/json")


def upload_name(name):
    """A label for an upload: the last path component of what the client calls it, printable."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", os.path.basename(name.replace("\\", "/"))).strip()
    return name or "upload"


async def read_body(request, limit):
    """The request body, refused (413) as soon as it passes ``limit`` bytes: by Content-Length
    before reading, else while streaming."""
    length = request.headers.get("content-length")
    too_large = f"the upload is larger than the server's limit of {limit / MB:.3g} MB ({limit} bytes)"
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, too_large if length.isdigit() else "bad Content-Length header")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, too_large)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected during the upload") from None
    if not size:
        raise ApiError(422, "the upload is empty: send the image file's bytes as the body")
    return b"".join(chunks)


def validation_message(exc):
    """One line from pydantic's errors: 'body.threshold: Input should be ... ; ...'."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(v) for v in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "invalid request: " + "; ".join(parts)


def create_app(model, cache_mb=2048, workers=8, max_upload_mb=40, token=None):
    """The FastAPI app serving ``model`` (npsam3.load_model): ``cache_mb`` of encoded images,
    ``workers`` requests admitted at once (HTTP concurrency; inference runs on one thread),
    uploads up to ``max_upload_mb``, every endpoint but /v1/health behind ``token`` if given."""
    engine = Engine(model, cache_mb * MB, workers)
    limit = round(max_upload_mb * MB)

    async def authorised(authorization: Annotated[Optional[str], Header()] = None):
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise ApiError(401, "missing or wrong token: send the header Authorization: Bearer "
                           "<token>", {"WWW-Authenticate": "Bearer"})

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="npsam3", version=__version__, lifespan=lifespan,
                  description="SAM3-family segmentation without PyTorch: upload an image once, "
                  "then concept prompts and clicks on its id.")
    app.state.engine = engine
    private = [Depends(authorised)]

    @app.exception_handler(ApiError)
    async def _api_error(request, exc):
        return error(exc.status, str(exc), exc.headers)

    @app.exception_handler(Busy)
    async def _busy(request, exc):
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NotFound)
    async def _not_found(request, exc):
        return error(404, str(exc))

    @app.exception_handler(Npsam3Error)
    async def _bad_input(request, exc):
        return error(422, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return error(400, "the request body is not valid JSON")
        return error(422, validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # logged with its traceback by the server, not sent
        return error(500, f"internal error ({type(exc).__name__}); the server log has details")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/health", summary="liveness, queue and cache use (no token needed)")
    async def health():
        return engine.health()

    @app.get("/v1/model", dependencies=private, summary="what the loaded bundle is")
    async def model_info():
        return engine.info()

    @app.post("/v1/images", dependencies=private, summary="upload an image file (raw body)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request, name: Annotated[str, Query(max_length=255)] = "upload"):
        with engine.admit():
            try:
                data = await asyncio.wait_for(read_body(request, limit), UPLOAD_SECONDS)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the upload took longer than {UPLOAD_SECONDS:g} s") from None
            return await engine.call(engine.upload, data, upload_name(name))

    @app.get("/v1/images/{image_id}", dependencies=private, summary="an uploaded image's size")
    async def image(image_id: str):
        with engine.admit():
            entry = await engine.call(engine.store.get, image_id)
            height, width = entry.size_hw
            return {"id": entry.id, "name": entry.name, "width": width, "height": height}

    @app.post("/v1/images/{image_id}/concept", dependencies=private,
              summary="every instance of a concept (the JSON of npsam3 segment)")
    async def concept(image_id: str, req: ConceptRequest):
        with engine.admit():
            return json_response(await engine.call(
                engine.concept, image_id, req.prompt, [(e.box, e.positive) for e in req.exemplars],
                req.threshold, req.nms_iou, req.presence))

    @app.post("/v1/images/{image_id}/object", dependencies=private,
              summary="one object from clicks / a box / a previous mask (the JSON of npsam3 object)")
    async def predict_object(image_id: str, req: ObjectRequest):
        mask_input = (req.mask_input.prediction, req.mask_input.mask) if req.mask_input else None
        with engine.admit():
            return json_response(await engine.call(
                engine.predict_object, image_id, [(p.xy, p.label) for p in req.points], req.box,
                mask_input, req.multimask, req.fill_holes))

    return app
