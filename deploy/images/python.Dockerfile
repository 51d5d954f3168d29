# Python 3.11 from Debian bookworm, laid out as the official python:3.11-slim-bookworm image
# is (python3.11, python3 and python in /usr/local/bin; groupadd/useradd present), for
# building services/Dockerfile and sdk/node-agent/Dockerfile without registry access.
# Built by scripts/images.py on its Debian base (a debootstrap rootfs imported locally).
# local-ca/ holds the building machine's own CA certificates (its
# /usr/local/share/ca-certificates, where a TLS-inspecting proxy's CA is kept; often none):
# trusted here, and SSL_CERT_FILE makes uv use the system bundle, so `uv sync` reaches PyPI
# through such a proxy.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
COPY local-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
 && update-ca-certificates \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11 \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python3 \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python
ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
