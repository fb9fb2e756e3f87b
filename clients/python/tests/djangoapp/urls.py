from django.urls import path

from . import views

urlpatterns = [
    path("api/open/", views.OpenView.as_view()),
    path("api/drf/", views.DrfApiKeyView.as_view()),
    path("api/public/", views.PublicAPIView.as_view()),
    path("api/orders/", views.OrdersView.as_view()),
    path("api/key-or-partner/", views.KeyOrPartnerView.as_view()),
    path("api/partner-or-scope/", views.PartnerOrScopeView.as_view()),
]
