"""Errors in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, for every failure path."""
from __future__ import annotations

from sonic.errors import SonicError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
         503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """The first pydantic error as one line naming the field, and that field's name."""
    if not errors:
        return "the request body is not valid", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Unions report every branch they tried ("prompt.str", "prompt.list[int]"): name the field only.
    field = ".".join(p for p in loc if "[" not in p and not p.startswith(("str", "list", "function-")))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if err.get("type") == "json_invalid":
        return f"the body is not valid JSON ({err.get('ctx', {}).get('error', msg)}): send a JSON object", None
    if err.get("type") == "missing":
        return f"'{field}' is required", field or None
    return (f"{field}: {msg}" if field else msg), field or None


def install_handlers(app):
    """Map every way a request can fail to the OpenAI error shape and the right status."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(SonicError)
    async def _user_error(request, exc: SonicError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return error_response(400, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}: see /v1/models, /v1/completions, " \
                     "/v1/chat/completions"
        elif exc.status_code == 400 and "parsing the body" in detail:
            detail = "the body could not be read as JSON (is it UTF-8?): send a JSON object"
        return error_response(exc.status_code, detail)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):  # the server logs the traceback itself
        return error_response(500, f"internal error ({type(exc).__name__}): the server is still running")
