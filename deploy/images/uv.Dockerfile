# The uv binary at /uv, as the official ghcr.io/astral-sh/uv image holds it, taken from the
# uv wheel on PyPI (its sha256 checked against the index) for building without registry
# access. Built by scripts/images.py.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE} AS fetch
ARG UV_VERSION
COPY fetch_uv.py /fetch_uv.py
RUN python3 /fetch_uv.py "${UV_VERSION}" /uv && /uv --version

FROM scratch
COPY --from=fetch /uv /uv
