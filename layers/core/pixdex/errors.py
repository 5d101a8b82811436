"""Typed errors. Each says whether a retry can help, which decides 4xx vs 5xx and batch retry."""

from __future__ import annotations


class PixdexError(Exception):
    """Base of every pixdex error. ``code`` is stable and machine-readable."""

    code = "pixdex_error"
    retryable = False
    http_status = 500

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.context}


class BadImageError(PixdexError):
    """The bytes are not a decodable image (truncated, corrupt, empty, not an image)."""

    code = "bad_image"
    http_status = 422


class UnsupportedFormatError(BadImageError):
    """A real file, but in a format pixdex does not accept."""

    code = "unsupported_format"
    http_status = 415


class ImageTooLargeError(BadImageError):
    """Over the byte or pixel limit; checked before full decode so bombs never expand."""

    code = "image_too_large"
    http_status = 413


class NotFoundError(PixdexError):
    code = "not_found"
    http_status = 404


class UnauthorizedError(PixdexError):
    code = "unauthorized"
    http_status = 401


class ForbiddenError(PixdexError):
    code = "forbidden"
    http_status = 403


class InvalidRequestError(PixdexError):
    code = "invalid_request"
    http_status = 422


class CapabilityDisabledError(PixdexError):
    """The request needs a model that this deployment has switched off (PIXDEX_CAPABILITIES)."""

    code = "capability_disabled"
    http_status = 501


class BackendUnavailableError(PixdexError):
    """The index or object store could not be reached; the work should be retried."""

    code = "backend_unavailable"
    retryable = True
    http_status = 503


class IndexMappingError(PixdexError):
    """The index refused a document for its shape; retrying the same document cannot help."""

    code = "index_mapping_error"
    http_status = 500
