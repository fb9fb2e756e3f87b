"""One view, protected four ways: the tests use PublicAPIView and OrdersView; bench/drf.sh
compares OpenView, DrfApiKeyView and PublicAPIView (the same view, different permission)."""

from typing import Any, Dict

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_api_key.permissions import HasAPIKey

from keygate import KeyInfo
from keygate.drf import HasKeygateKey, HasKeygateScope


def describe(key: Any) -> Dict[str, Any]:
    """What the view saw in request.auth."""
    if not isinstance(key, KeyInfo):
        return {"auth": None}
    return {
        "auth": {
            "id": key.id,
            "name": key.name,
            "owner": key.owner,
            "scopes": list(key.scopes),
            "metadata": dict(key.metadata),
        }
    }


class Hello(APIView):
    """The view body every variant shares."""

    def get(self, request: Request) -> Response:
        return Response(
            {"message": "This is a public API that requires an API key.", **describe(request.auth)}
        )


class OpenView(Hello):
    permission_classes: list = []


class DrfApiKeyView(Hello):
    permission_classes = [HasAPIKey]


class PublicAPIView(Hello):
    permission_classes = [HasKeygateKey]


class OrdersView(Hello):
    permission_classes = [HasKeygateScope("orders:read")]


class HasPartnerHeader(BasePermission):
    """Another way in, to show HasKeygateKey composing like HasAPIKey."""

    def has_permission(self, request: Any, view: Any) -> bool:
        return request.META.get("HTTP_X_PARTNER") == "yes"


class KeyOrPartnerView(Hello):
    permission_classes = [HasKeygateKey | HasPartnerHeader]


class PartnerOrScopeView(Hello):
    permission_classes = [HasPartnerHeader | HasKeygateScope("orders:read")]
