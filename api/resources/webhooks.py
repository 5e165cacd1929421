"""/workspaces/{workspaceId}/webhook-endpoints: outbound webhook endpoints and their deliveries."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.webhook_endpoints import WebhookEndpointService

READERS = "owner, admin (the operator may read)"
DELIVERY = ("Each event is delivered at least once to every endpoint subscribed to its type when it happened, signed "
            "as Standard Webhooks says (webhook-id: the event's id, the same on every attempt; webhook-timestamp; "
            "webhook-signature: v1, HMAC-SHA256 of id.timestamp.body with the endpoint's secret). Any 2xx within 10 s "
            "succeeds; failures are retried about 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h after the previous "
            "attempt, 13 attempts over 77 hours, then the delivery fails. An endpoint whose every attempt failed for 5 "
            "days is disabled (`enabled: false`, its pending deliveries fail); a delivery retried by hand that "
            "succeeds enables it again.")


class WebhookEndpoints:
    def __init__(self, webhooks: WebhookEndpointService) -> None:
        self._webhooks = webhooks

    @doc("The workspace's webhook endpoints, newest first", who=READERS, query=schemas.PageQuery,
         response=r.WebhookEndpointList, errors=(401, 403, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.PageQuery, req)
        found = self._webhooks.list(req.context.caller, workspace_id, limit=q.limit, cursor=q.cursor)
        resp.media = views.page(found, views.webhook_endpoint)

    @doc("Add a webhook endpoint; its signing secret is in this answer only", who="owner, admin", status=201,
         body=schemas.CreateWebhookEndpoint, response=r.CreatedWebhookEndpointShape, errors=(401, 403, 404, 422),
         notes=DELIVERY)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.CreateWebhookEndpoint, req)
        created = self._webhooks.create(req.context.caller, workspace_id, body.url, body.events, body.description)
        resp.status, resp.media = falcon.HTTP_201, views.webhook_endpoint(created)


class WebhookEndpointItem:
    def __init__(self, webhooks: WebhookEndpointService) -> None:
        self._webhooks = webhooks

    @doc("A webhook endpoint (without its secret)", who=READERS, response=r.WebhookEndpointShape,
         errors=(401, 403, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, endpoint_id: str) -> None:
        resp.media = views.webhook_endpoint(self._webhooks.get(req.context.caller, workspace_id, endpoint_id))

    @doc("Remove a webhook endpoint: no event reaches it any more, its pending deliveries fail", who="owner, admin",
         status=204, errors=(401, 403, 404))
    def on_delete(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, endpoint_id: str) -> None:
        self._webhooks.delete(req.context.caller, workspace_id, endpoint_id)
        resp.status = falcon.HTTP_204


class WebhookDeliveries:
    def __init__(self, webhooks: WebhookEndpointService) -> None:
        self._webhooks = webhooks

    @doc("The endpoint's deliveries, newest first", who=READERS, query=schemas.PageQuery,
         response=r.WebhookDeliveryList, errors=(401, 403, 404, 422), notes=DELIVERY)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, endpoint_id: str) -> None:
        q = schemas.query(schemas.PageQuery, req)
        found = self._webhooks.deliveries(req.context.caller, workspace_id, endpoint_id, limit=q.limit, cursor=q.cursor)
        resp.media = views.page(found, views.webhook_delivery)


class WebhookDeliveryRetry:
    def __init__(self, webhooks: WebhookEndpointService) -> None:
        self._webhooks = webhooks

    @doc("Attempt a delivery again now, with the same webhook-id (also one that succeeded or failed)",
         who="owner, admin", status=202, response=r.WebhookDeliveryShape, errors=(401, 403, 404))
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, endpoint_id: str,
                delivery_id: str) -> None:
        found = self._webhooks.retry(req.context.caller, workspace_id, endpoint_id, delivery_id)
        resp.status, resp.media = falcon.HTTP_202, views.webhook_delivery(found)
