# Local base for the no-registry run: the debootstrap rootfs (imported as fraud-local/rootfs)
# plus the host's CA bundle at its own path, since HTTPS from containers passes an
# intercepting proxy here (update-ca-certificates cannot overwrite it there).
FROM fraud-local/rootfs:bookworm
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/host-ca.crt \
    PIP_CERT=/etc/ssl/host-ca.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.crt
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/host-ca.crt
