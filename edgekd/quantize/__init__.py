"""INT8 quantization-aware training. Importing the package registers how its fake-quantized modules
are rebuilt from an artifact's spec (the spec itself knows no stage)."""
from ..models.spec import register_extension
from .fakequant import wrap_quantized

register_extension("quant", "edgekd_quant", wrap_quantized)
