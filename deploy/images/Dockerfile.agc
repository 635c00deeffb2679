# agc: the Actions Gateway Controller (`agc run`, the GMC's AGC Deployment); the same binary
# carries the worker wrapper (`agc worker`, spec/agc.md section 6), which Dockerfile.worker copies
# into the runner image. Static Swift stdlib, slim Debian, non-root.
FROM swift:6.3-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev libcurl4-openssl-dev libnghttp2-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN swift build -c release --static-swift-stdlib --product agc \
    && install -D .build/release/agc /out/agc

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/agc /usr/local/bin/agc
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agc"]
