# Tensor Broker: multi-stage build, runtime stage carries only production deps and dist/.
# docker build -t tensorbroker:dev .   (offline: --build-arg BASE_IMAGE=tb-node-base:local
# and BUILD_IMAGE likewise; both need node + npm for the build stage).
ARG BUILD_IMAGE=node:20-bookworm-slim
ARG BASE_IMAGE=node:20-bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
ENV ONNXRUNTIME_NODE_INSTALL=skip
RUN npm ci --no-audit --no-fund
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
RUN npm run build && npm prune --omit=dev

FROM ${BASE_IMAGE}
WORKDIR /opt/tensorbroker
ENV NODE_ENV=production TB_HOST=0.0.0.0 TB_MODELS=/etc/tensorbroker/models.yaml
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
