"""Device profiles (YAML data), host detection and onnxruntime latency/memory measurement."""
