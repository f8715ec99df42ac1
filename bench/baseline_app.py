"""The benchmark's baseline: the same server stack answering a bare 202 to every request."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    await request.body()
    return Response(b'{"event_id":"00000000-0000-0000-0000-000000000000"}', 202)


app = Starlette(
    routes=[Route("/v1/integrations/{integration_id:int}/events", accept, methods=["POST"])]
)
