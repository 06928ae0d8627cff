"""edgekd: distill, prune, quantize (QAT) and export transformers for edge devices, with measured numbers."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import edgekd` must not pull in torch for the CLI's fast paths
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
