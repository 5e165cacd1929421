"""/workspaces"""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.workspaces import WorkspaceService


class Workspaces:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Create a workspace bound to a billing account", status=201, body=schemas.CreateWorkspace,
         response=r.WorkspaceShape, errors=(401, 403, 404, 422),
         notes="Without billingAccountId the caller's default billing account is bound; a given one "
               "must be the caller's (404 otherwise). The bound account is linked and is the default.")
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = schemas.load(schemas.CreateWorkspace, req)
        workspace = self._workspaces.create(req.context.caller, body.name, body.billing_account_id)
        resp.status, resp.location = falcon.HTTP_201, f"/workspaces/{workspace.id}"
        resp.media = views.workspace(workspace)

    @doc("Workspaces where the caller is owner or member", response=r.WorkspaceList, errors=(401, 403))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"data": [views.workspace(w) for w in self._workspaces.of_caller(req.context.caller)]}


class WorkspaceItem:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("A workspace (members and the operator)", response=r.WorkspaceShape, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        resp.media = views.workspace(self._workspaces.get(req.context.caller, workspace_id))


class Members:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Add a member, or change a member's role (owner, admin)", status=201, body=schemas.AddMember,
         response=r.MemberShape, errors=(401, 403, 404, 409, 422))
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.AddMember, req)
        role = self._workspaces.add_member(req.context.caller, workspace_id, body.user_id, body.role)
        resp.status, resp.media = falcon.HTTP_201, {"userId": body.user_id, "role": role}
