"""moto's server, with S3's CORS headers on browser form uploads (`python -m pixdex.local.moto_server ...`).

The local stack turns off moto's allow-everything CORS so a browser meets the buckets' own CORS rules, as in
AWS. moto applies those rules to preflights and to most operations, but not to the answer of a POST Object
(the presigned form upload the web page sends): S3 adds Access-Control-Allow-Origin there when a rule
matches, moto does not, and the browser then refuses to tell the page the upload worked. This adds them,
from the same bucket rules, and nothing else."""

from __future__ import annotations

import functools
from typing import Any

from moto import server
from moto.s3.responses import S3Response


def _with_cors(post: Any) -> Any:
    @functools.wraps(post)
    def bucket_response_post(self: Any, request: Any, bucket_name: str) -> Any:
        status, headers, body = post(self, request, bucket_name)
        # The matching rule's headers, or none when the origin is not allowed (the browser then blocks it).
        return status, {**self._get_cors_headers_other(), **headers}, body

    return bucket_response_post


def main() -> None:
    setattr(S3Response, "_bucket_response_post", _with_cors(S3Response._bucket_response_post))  # noqa: B010
    server.main()


if __name__ == "__main__":
    main()
