#!/bin/sh
# Regenerates tensorbroker_client/client_pb2.py from proto/client.proto with the
# system protoc (Debian: protobuf-compiler). The result is committed; it needs
# the protobuf runtime >= 3.20 (Debian 12's python3-protobuf works).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
protoc --proto_path="$root/proto" --python_out="$here/tensorbroker_client" "$root/proto/client.proto"
echo "generated $here/tensorbroker_client/client_pb2.py ($(protoc --version))"
