"""Generated code of the Open Inference Protocol (KServe V2) from protos/inference (scripts/gen_protos.py). Do not edit."""
