# HAProxy from Debian bookworm (2.6) for docker-compose.yml without registry access (see
# deploy/compose/offline.yml). As the official image: the config at
# /usr/local/etc/haproxy/haproxy.cfg, master-worker in the foreground, SIGUSR1 to stop
# gracefully; wget for the compose health check.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy wget \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && mkdir -p /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
