# Tensor Broker: multi-stage build; the runtime stage carries only production deps and dist/.
#
# Online (official Node LTS image):
#   docker build -t tensorbroker:dev .
# Without a registry (bases made from this host's node by scripts/offline-bases.sh;
# RUN steps need the host network to reach the npm registry):
#   scripts/offline-bases.sh node build
#   docker build --network host --build-arg BUILD_IMAGE=tb-node-build:local \
#     --build-arg BASE_IMAGE=tb-node-base:local -t tensorbroker:dev .
# npm behind a proxy or a private registry / CA (none of these reach the final image):
#   --build-arg HTTPS_PROXY=http://proxy:3128   (Docker's predefined proxy args; npm honours them)
#   --build-arg NPM_REGISTRY=https://npm.example.com/
#   --build-arg NPM_CA="$(cat corp-ca.pem)"
ARG BUILD_IMAGE=node:24-bookworm-slim
ARG BASE_IMAGE=node:24-bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG NPM_REGISTRY=
ARG NPM_CA=
WORKDIR /src
# .npmrc keeps onnxruntime-node (optional, example-only) from downloading CUDA binaries.
COPY package.json package-lock.json .npmrc ./
RUN if [ -n "$NPM_CA" ]; then printf '%s\n' "$NPM_CA" > /tmp/npm-ca.pem; export npm_config_cafile=/tmp/npm-ca.pem; fi; \
    if [ -n "$NPM_REGISTRY" ]; then export npm_config_registry="$NPM_REGISTRY"; fi; \
    npm ci --no-audit --no-fund --loglevel=error && rm -f /tmp/npm-ca.pem
COPY tsconfig.json tsconfig.build.json ./
COPY app app
COPY bridges bridges
COPY core core
COPY model-manager model-manager
COPY task-manager task-manager
COPY proto proto
COPY sdk/node sdk/node
COPY examples examples
COPY bench bench
COPY jobs jobs
COPY cluster cluster
COPY tests tests
# The broker needs neither dev dependencies nor the text detector's onnxruntime.
RUN npm run build && npm prune --omit=dev --no-audit --no-fund --loglevel=error && \
    rm -rf node_modules/onnxruntime-node node_modules/onnxruntime-common

FROM ${BASE_IMAGE}
WORKDIR /opt/tensorbroker
# Binds 127.0.0.1 unless TB_HOST says otherwise (docker-compose.yml sets it from .env; with
# host networking that keeps it on the machine). With `docker run -p`, pass -e TB_HOST=0.0.0.0.
ENV NODE_ENV=production TB_MODELS=/etc/tensorbroker/models.yaml
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
COPY --from=build /src/package.json package.json
COPY models.yaml /etc/tensorbroker/models.yaml
# The Docker socket is root-owned; run as the socket's group instead of root
# where the host allows it (see README, "Security"): docker run --group-add <gid of docker.sock> --user 1000.
USER 1000:1000
EXPOSE 8000 8001 8002 7787
ENTRYPOINT ["node", "dist/app/cli.js"]
CMD ["serve"]
