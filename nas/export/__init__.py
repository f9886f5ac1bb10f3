"""Standalone bundles of a SubTransformer (`hwnas.export`, folder `nas/export/`): written, verified, run.

    from hwnas.export import load_bundle
    bundle = load_bundle("bundle/")           # every file checked against its manifest
    print(bundle.covers())                    # what its latency certificate covers: device, revision, runtime
    memory, *cross_kv = bundle.run_encoder(src)   # then bundle.run_decoder_step(...) per token
"""

from hwnas.export._bundle import (
    BUNDLE_FORMAT,
    FORMAT_RUNTIME,
    FORMATS,
    Bundle,
    ExportFormat,
    LatencyCertificate,
    export_bundle,
    export_onnx,
    graph_output_names,
    load_bundle,
    onnx_session,
)

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_RUNTIME",
    "FORMATS",
    "Bundle",
    "ExportFormat",
    "LatencyCertificate",
    "export_bundle",
    "export_onnx",
    "graph_output_names",
    "load_bundle",
    "onnx_session",
]
