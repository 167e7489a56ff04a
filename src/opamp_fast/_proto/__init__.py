"""Generated protobuf modules (see scripts/gen_proto.py); do not edit."""
