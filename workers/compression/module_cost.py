"""The cost of a torch module: a built-in architecture (zoo or library) estimated on the meta device.

The same `ModelCost` as `onnx_cost` gives for an ONNX upload: weight bytes, the bytes of every tensor a
forward pass of one sample produces, and its FLOPs (torch's own FlopCounterMode; multiply-adds count as
2). For a built-in architecture nothing is allocated: it is built and run on the meta device, where
tensors have shapes only; a loaded model runs one zero sample where its weights are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

from workers.compression import library_models, zoo
from workers.compression.architectures import parse_architecture
from workers.compression.cost import ModelCost

__all__ = ["estimate_module_cost", "estimate_zoo_cost"]


def estimate_zoo_cost(architecture: str, input_shape: tuple[int, ...], num_classes: int) -> ModelCost:
    """Builds `architecture` on the meta device for samples of `input_shape` and estimates its cost."""
    ref = parse_architecture(architecture)
    if ref.library == "zoo":
        with torch.device("meta"):
            module = zoo.build(architecture, num_classes=num_classes, input_shape=input_shape)
    else:
        module = library_models.shapes_only(ref, num_classes=num_classes, image_size=input_shape[-1])
    return estimate_module_cost(module, input_shape)


def estimate_module_cost(module: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    """Runs one sample through `module` in eval mode, counting FLOPs and every leaf's output bytes: on the
    meta device when the module is built there (nothing allocated), else one zero sample where its weights
    are (a loaded model, e.g. a converted ONNX graph that reads values, which the meta device cannot run;
    its graph's cost was checked when it was loaded). The module is left as it was."""
    tensors = [*module.parameters(), *module.buffers()]
    params = sum(t.numel() * t.element_size() for t in tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    produced = [0]

    def count(_: nn.Module, __: object, output: object) -> None:
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                produced[0] += t.numel() * t.element_size()

    handles: list[RemovableHandle] = [m.register_forward_hook(count) for m in module.modules()
                                      if not list(m.children())]
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, *input_shape, device=device))
    finally:
        module.train(training)
        for handle in handles:
            handle.remove()
    return ModelCost(params_bytes=params, peak_activation_bytes=produced[0],
                     flops_per_sample=int(counter.get_total_flops()))
