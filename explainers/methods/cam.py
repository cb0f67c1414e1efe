"""The class activation map family: CAM and the gradient CAMs.

Notation: A is the layer's activation (1, C, h, w), g = d y^c / d A is (k, C, h, w) for k target
classes, Z = h * w. Every map is ReLU(sum_k w_k A^k), upsampled and normalised by the base class;
a method only says how its weights w are made, shaped (k, C) or element-wise (k, C, h, w).
With the ``eigen_smooth`` option the channel sum becomes the first principal component of the
weighted activations (`explainers.methods.smooth.eigen_projection`).
"""

from __future__ import annotations

import torch
from torch import nn

from explainers.errors import MethodError
from explainers.methods.core import Evidence, Method, cam_from_sum, register
from explainers.methods.smooth import eigen_projection


class WeightedActivationCAM(Method):
    """Base of the CAMs: ReLU of the activation weighted channel- or element-wise."""

    kind = "cam"
    reads_gradient = True

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Channel weights (k, C) or element-wise weights (k, C, h, w)."""
        raise NotImplementedError

    def layer_weights(self, evidence: Evidence, layer: str) -> torch.Tensor:
        return self.weights(evidence.activations(layer), evidence.gradients(layer))

    def compute(self, evidence: Evidence, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        activations = evidence.activations(layer)  # (1, C, h, w)
        weights = self.layer_weights(evidence, layer)
        if weights.ndim == 2:
            weights = weights[:, :, None, None]
        weighted = weights * activations  # (k, C, h, w)
        if evidence.options.get("eigen_smooth"):
            weighted_sum = eigen_projection(weighted, evidence.counterfactual)  # (k, h, w)
        else:
            weighted_sum = weighted.sum(1)  # (k, h, w)
        return cam_from_sum(weighted_sum, evidence.input_size)


@register
class GradCAM(WeightedActivationCAM):
    """Grad-CAM, Selvaraju et al. 2017 (arXiv 1610.02391): w_k = (1/Z) sum_ij g^k_ij."""

    name = "gradcam"
    title = "Grad-CAM"

    def weights(self, activations, gradients):
        return gradients.mean((2, 3))


@register
class GradCAMPlusPlus(WeightedActivationCAM):
    """Grad-CAM++, Chattopadhyay et al. 2018 (arXiv 1710.11063), eq. 19.

    w_k = sum_ij alpha^k_ij ReLU(g^k_ij), alpha = g^2 / (2 g^2 + sum_ab A^k_ab g^3),
    with alpha = 0 where the denominator is 0 (there g = 0, so the term vanishes anyway).
    """

    name = "gradcam++"
    title = "Grad-CAM++"

    def weights(self, activations, gradients):
        g2 = gradients.pow(2)
        denominator = 2 * g2 + activations.sum((2, 3), keepdim=True) * g2 * gradients
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        return (alpha * gradients.relu()).sum((2, 3))


@register
class XGradCAM(WeightedActivationCAM):
    """XGrad-CAM, Fu et al. 2020 (arXiv 2008.02312): w_k = sum_ij (A^k_ij / sum_ab A^k_ab) g^k_ij."""

    name = "xgradcam"
    title = "XGrad-CAM"

    def weights(self, activations, gradients):
        totals = activations.sum((2, 3), keepdim=True)
        safe = torch.where(totals != 0, totals, torch.ones_like(totals))
        return (gradients * activations / safe).sum((2, 3))


@register
class LayerCAM(WeightedActivationCAM):
    """LayerCAM, Jiang et al. 2021: element-wise weights ReLU(g); sharp at shallow layers."""

    name = "layercam"
    title = "LayerCAM"

    def weights(self, activations, gradients):
        return gradients.relu()


@register
class HiResCAM(WeightedActivationCAM):
    """HiResCAM, Draelos & Carin 2020 (arXiv 2011.08891): element-wise weights g."""

    name = "hirescam"
    title = "HiResCAM"

    def weights(self, activations, gradients):
        return gradients


@register
class ClassActivationMap(WeightedActivationCAM):
    """CAM, Zhou et al. 2016 (arXiv 1512.04150): w = the final linear layer's row for the class.

    Only defined where the layer's output, globally average-pooled, feeds the final linear
    layer directly (ResNets at their last block); checked numerically on every call.
    """

    name = "cam"
    title = "CAM"
    reads_gradient = False

    def layer_weights(self, evidence: Evidence, layer: str) -> torch.Tensor:
        linear = final_linear(evidence.model)
        activations = evidence.activations(layer)
        pooled_logits = None
        if linear is not None and linear.in_features == activations.shape[1]:
            pooled_logits = torch.nn.functional.linear(activations.mean((2, 3)), linear.weight, linear.bias)
        logits = evidence.logits.detach()
        if pooled_logits is None or not torch.allclose(
            pooled_logits[0], logits, rtol=1e-3, atol=1e-3 * logits.abs().max()
        ):
            raise MethodError(
                f"CAM needs a network that ends in global average pooling and one linear layer "
                f"right after the chosen layer; that is not the case at {layer!r}. "
                "Use Grad-CAM, which generalises CAM to any layer."
            )
        sign = -1.0 if evidence.counterfactual else 1.0
        return sign * linear.weight[evidence.targets].to(activations.dtype)


def final_linear(model: nn.Module) -> nn.Linear | None:
    """The last `nn.Linear` registered in the model, or None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
