"""Device profiles (data), host detection, operator compatibility, input feeds and ONNX execution on the host.

Below both `export` and `profile`: what a device is and how a model is fed to it, not how it is built or timed.
"""
