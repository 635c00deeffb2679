# agc: the Actions Gateway Controller (`agc run`, the GMC's AGC Deployment); the same binary carries
# the worker wrapper (`agc worker`), which Dockerfile.worker adds to the runner image.
# FROM scratch with what deploy/images/rootfs.sh puts in, the same list `make images` uses
# (deploy/images/images.list names the tag, user and entrypoint; test_images.py keeps this file
# equal to it). Build from the repository root: docker build -f deploy/images/Dockerfile.agc .
FROM swift:6.3-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev libcurl4-openssl-dev libnghttp2-dev libyaml-dev \
        pkg-config patchelf binutils ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN swift build -c release --static-swift-stdlib --scratch-path .build/static --product agc \
    && sh deploy/images/rootfs.sh .build/static/release/agc /out/rootfs

FROM scratch
COPY --from=build /out/rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agc"]
