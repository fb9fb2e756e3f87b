"""Django 3.2's PBKDF2 setting (260,000 iterations): keys hashed by a project on Django 3.2
carry that count in their hash, and must verify with it, not with today's default."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class Django32PBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 260_000
