"""A custom key model, as drf-api-key's docs show one: keys that belong to an organization,
with an extra column. Its table is billing_organizationapikey."""

from django.db import models
from rest_framework_api_key.models import AbstractAPIKey


class Organization(models.Model):
    name = models.CharField(max_length=128)


class OrganizationAPIKey(AbstractAPIKey):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    plan = models.CharField(max_length=20, default="free")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "Organization API key"
        verbose_name_plural = "Organization API keys"
