"""Generated code of the desiderata v1 API (scripts/gen_protos.py). Do not edit."""
