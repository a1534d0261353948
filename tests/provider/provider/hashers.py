from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """pbkdf2_sha256, the format DOT stores client secrets in, with few iterations."""

    iterations = 1000
