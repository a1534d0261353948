"""A django-oauth-toolkit OAuth 2.0 / OpenID Connect provider that behaves like Provet Cloud.

For provet-broker's tests only: see ../README.md.
"""
