"""Run ONNX Runtime GenAI's model builder with one fix; executed by the builder's own Python, never imported.

    <builder env>/bin/python genai_builder_main.py -i MODEL_DIR -o OUT -p fp32 -e cpu ...   (the builder's arguments)

onnxruntime-genai 0.18's builder reads `config.rope_theta` and falls back to 10000 when the attribute is missing
(builders/base.py). transformers 5.x, which the builder needs, moved it into `config.rope_parameters`, so every
model whose rotary base is not 10000 was built with the wrong one, silently: SmolLM2-135M (base 100000) came
out with 25% top-1 agreement with PyTorch and logits off by 28.6, which the toolchain's parity check caught.
Here the attribute reads through to `rope_parameters` again, then the builder runs unchanged.
"""

import runpy
import sys

from transformers import PretrainedConfig


def _rope_theta(self):
    if "_rope_theta" in self.__dict__:  # a config class that still sets the attribute itself
        return self.__dict__["_rope_theta"]
    params = getattr(self, "rope_parameters", None) or {}
    if "rope_theta" not in params:
        raise AttributeError("rope_theta")  # hasattr() stays False, so the builder's other fallbacks still apply
    return params["rope_theta"]


def _set_rope_theta(self, value):
    self.__dict__["_rope_theta"] = value


if not hasattr(PretrainedConfig, "rope_theta"):
    PretrainedConfig.rope_theta = property(_rope_theta, _set_rope_theta)

sys.argv[0] = "onnxruntime_genai.models.builder"
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
