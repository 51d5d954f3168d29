"""Lingua scheduler shared package.

Two layers: :mod:`lingua_shared.protocol` (wire models, depends on pydantic only, used by the
node and client SDKs) and the service layer (keys, scripts, bus, settings, errors, logging),
which needs the ``service`` extra.
"""
