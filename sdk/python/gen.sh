#!/bin/sh
# Regenerates the committed protobuf modules with the system protoc (Debian:
# protobuf-compiler 3.21); they need the protobuf runtime >= 3.20 (Debian 12's
# python3-protobuf works):
#   tensorbroker_client/client_pb2.py  from proto/client.proto (the ZeroMQ client bridge)
#   tensorbroker_model/link_pb2.py     from proto/link.proto   (the broker <-> model copy link)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
protoc --proto_path="$root/proto" --python_out="$here/tensorbroker_client" "$root/proto/client.proto"
protoc --proto_path="$root/proto" --python_out="$here/tensorbroker_model" "$root/proto/link.proto"
echo "generated $here/tensorbroker_client/client_pb2.py and $here/tensorbroker_model/link_pb2.py ($(protoc --version))"
