"""edgekd: distill, prune, quantize (QAT) and export transformers for edge devices, with measured numbers."""
__version__ = "0.2.0"


def load_model(artifact_dir):
    """The PyTorch module of any stage artifact (teacher, distill, prune, qat), rebuilt from its spec on the CPU."""
    from . import quantize  # noqa: F401  registers how fake-quantized modules are rebuilt
    from .artifact import Artifact
    from .models.spec import load_model_from_artifact

    return load_model_from_artifact(Artifact.load(artifact_dir))


def __getattr__(name):  # lazy: `import edgekd` must not pull in torch for the CLI's fast paths
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
