"""Plain-language texts for "how this map was made": what each method does, its formula (LaTeX,
for st.latex) and the paper it comes from, and what each step of the decomposition shows.

Written for a student who knows what a convolutional network is but not these papers. The
numbers are filled in by the page from `explainers.methods.steps`.
"""

from __future__ import annotations

from dataclasses import dataclass

from explainers.methods.steps import TOP_CHANNELS, MapSteps
from explainers.services.formats import percent


@dataclass(frozen=True)
class MethodText:
    """What the page says about one method.

    Attributes:
        intro: two or three sentences in plain language.
        formula: the method's definition in LaTeX.
        source: the paper, with its arXiv number or venue.
        weights: what the bar chart of step 2 shows.
        own: what the method's own per-channel picture (step 3) shows.
    """

    intro: str
    formula: str
    source: str
    weights: str
    own: str


METHOD_TEXTS: dict[str, MethodText] = {
    "gradcam": MethodText(
        intro=(
            "Grad-CAM asks, for every channel, how much the class score would rise if that channel "
            "fired a little more at each position (the gradient). It averages this over the map to get "
            "one weight α per channel, adds the channels up with these weights, and keeps the positive part."
        ),
        formula=(
            r"\alpha_k^c=\frac{1}{Z}\sum_{i,j}\frac{\partial y^c}{\partial A^k_{ij}},\qquad "
            r"L^c_{\text{Grad-CAM}}=\mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)"
        ),
        source="Selvaraju et al., “Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
        "Localization”, ICCV 2017 (arXiv:1610.02391)",
        weights=(
            "α of every channel, sorted. A positive α means more of this channel raises the class score; "
            "a negative one, that it lowers it."
        ),
        own="the gradient ∂y/∂A of the chosen channel at each position; α is its average",
    ),
    "gradcam++": MethodText(
        intro=(
            "Grad-CAM++ gives each position of a channel its own coefficient α (from the second and "
            "third powers of the gradient) and counts only positive gradients. A channel that fires on "
            "two cats then counts both in full, instead of having them averaged away."
        ),
        formula=(
            r"w_k^c=\sum_{i,j}\alpha^{kc}_{ij}\,\mathrm{ReLU}\big(g^k_{ij}\big),\quad "
            r"\alpha^{kc}_{ij}=\frac{(g^k_{ij})^2}{2(g^k_{ij})^2+\sum_{a,b}A^k_{ab}\,(g^k_{ij})^3},\quad "
            r"L^c=\mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)"
        ),
        source="Chattopadhyay et al., “Grad-CAM++: Improved Visual Explanations for Deep Convolutional "
        "Networks”, WACV 2018 (arXiv:1710.11063)",
        weights="w of every channel, sorted: the α-weighted sum of its positive gradients.",
        own="α of each position of the chosen channel (0 where the gradient is 0)",
    ),
    "xgradcam": MethodText(
        intro=(
            "XGrad-CAM weighs each position's gradient by the share of the channel's activation that "
            "sits there, instead of averaging all positions equally. Fu et al. derive this weight from "
            "two axioms a map should satisfy (sensitivity and conservation)."
        ),
        formula=(
            r"\alpha_k^c=\sum_{i,j}\frac{A^k_{ij}}{\sum_{a,b}A^k_{ab}}\,\frac{\partial y^c}{\partial A^k_{ij}},"
            r"\qquad L^c=\mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)"
        ),
        source="Fu et al., “Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of "
        "CNNs”, BMVC 2020 (arXiv:2008.02312)",
        weights="α of every channel, sorted (with sign).",
        own="the chosen channel's activation share A/ΣA times the gradient at each position; it sums to α",
    ),
    "layercam": MethodText(
        intro=(
            "LayerCAM gives every position its own weight, the positive part of its gradient, instead "
            "of one weight per channel. The map keeps the detail of the layer, which makes it useful at "
            "shallow, high-resolution layers where Grad-CAM's averaged gradients blur."
        ),
        formula=r"L^c=\mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\big(g^k\big)\odot A^k\Big),\quad g^k=\frac{\partial y^c}{\partial A^k}",
        source="Jiang et al., “LayerCAM: Exploring Hierarchical Class Activation Maps for Localization”, "
        "IEEE Transactions on Image Processing 30, 2021",
        weights=(
            "LayerCAM has no weight per channel; the chart shows each channel's net term in the sum, "
            "Σ over positions of ReLU(g)·A, sorted."
        ),
        own="ReLU(gradient) × activation of the chosen channel: its term in the sum",
    ),
    "hirescam": MethodText(
        intro=(
            "HiResCAM multiplies each position's activation by its own gradient, positive or negative, "
            "instead of by the channel's average gradient. Summed over channels this is exactly how much "
            "each position adds to the class score to first order, so the map is faithful to the model."
        ),
        formula=r"L^c=\mathrm{ReLU}\Big(\sum_k g^k\odot A^k\Big),\quad g^k=\frac{\partial y^c}{\partial A^k}",
        source="Draelos & Carin, “Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks”, 2020 (arXiv:2011.08891)",
        weights=(
            "HiResCAM has no weight per channel; the chart shows each channel's net term in the sum, "
            "Σ over positions of g·A, sorted."
        ),
        own="gradient × activation of the chosen channel: its term in the sum",
    ),
    "cam": MethodText(
        intro=(
            "CAM works on networks that average each channel over the image and feed the averages to "
            "one linear layer. The class score is then Σ w_k · mean(A^k); applying the same weights "
            "before the averaging says where on the image the score comes from. No gradient is needed."
        ),
        formula=(
            r"y^c=\sum_k w_k^c\,\frac{1}{Z}\sum_{i,j}A^k_{ij}+b^c,\qquad "
            r"L^c_{\text{CAM}}=\mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)"
        ),
        source="Zhou et al., “Learning Deep Features for Discriminative Localization”, CVPR 2016 "
        "(arXiv:1512.04150)",
        weights="The final linear layer's weights for the class, sorted (with sign).",
        own="",
    ),
    "scorecam": MethodText(
        intro=(
            "Score-CAM uses no gradient. It turns each channel into a mask (scaled to [0, 1] and "
            "stretched to the image size), shows the model the image seen through that mask, and takes "
            "the class probability it then gives as the channel's weight."
        ),
        formula=(
            r"H^k=\mathrm{minmax}\big(\mathrm{up}(A^k)\big),\quad w_k^c=p_c\big(X\odot H^k\big),\quad "
            r"L^c=\mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)"
        ),
        source="Wang et al., “Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
        "Networks”, CVPR Workshops 2020 (arXiv:1910.01279); weights as in the authors' code",
        weights="The class probability on each channel's masked image, sorted (0 for channels not scored).",
        own="the chosen channel as a mask (its activation scaled to [0, 1])",
    ),
    "occlusion": MethodText(
        intro=(
            "Occlusion asks the model directly. Cover a square of the image, and see how much the class "
            "probability drops. Slide the square over the whole image: where covering hurts most, the "
            "model relied on what was there. It needs one forward pass per position and no gradient."
        ),
        formula=(
            r"d_p=p_c(X)-p_c\big(X\text{ with window }p\text{ covered}\big),\qquad "
            r"M_{ij}=\frac{1}{|\{p\ni(i,j)\}|}\sum_{p\,\ni\,(i,j)} d_p,\qquad L=\mathrm{minmax}\big(\mathrm{ReLU}(M)\big)"
        ),
        source="Zeiler & Fergus, “Visualizing and Understanding Convolutional Networks”, ECCV 2014 "
        "(arXiv:1311.2901), section 4.2",
        weights="",
        own="",
    ),
}


@dataclass(frozen=True)
class StepText:
    """One step of the decomposition: its heading, its formula and what it shows."""

    heading: str
    formula: str
    text: str


STEPS: dict[str, StepText] = {
    "channels": StepText(
        "1 · The layer's channels",
        r"A^k\in\mathbb{R}^{h\times w},\quad k=1,\dots,C",
        "The target layer gives C feature maps, one per channel; each lights up where it detects its "
        "own pattern (an ear, a stripe, an edge). Shown: the channels that move the map most, by "
        "Σ|weight × activation|, each on its own colour scale (yellow is its largest value).",
    ),
    "weights": StepText(
        "2 · How much each channel counts",
        r"w_k^c\ \text{(one number per channel)}",
        "The method turns what it measured into a weight per channel.",
    ),
    "channel": StepText(
        "3 · One channel up close",
        r"A^k,\quad W^k\odot A^k",
        "Pick a channel: its activation, the method's own step for it, and its term in the sum "
        "(red adds to the class, blue takes away).",
    ),
    "sum": StepText(
        "4 · The weighted sum, before and after the ReLU",
        r"S=\sum_k W^k\odot A^k,\qquad \mathrm{ReLU}(S)=\max(S,0)",
        "Adding the weighted channels gives S. Where S is negative the layer's evidence speaks "
        "against the class; the ReLU removes it, so the map shows only evidence for the class.",
    ),
    "upsample": StepText(
        "5 · Upsampled and laid over the image",
        r"L=\frac{\mathrm{up}(\mathrm{ReLU}(S))-\min}{\max-\min}",
        "The small map is stretched to the image size by bilinear interpolation and scaled so that its "
        "largest value is 1; then it is coloured and laid over the image.",
    ),
}

COUNTERFACTUAL = (
    "Counterfactual: the gradients are negated (Grad-CAM paper, section 5.2), so every step reads "
    "the other way and the map shows what lowers the class."
)


def steps_summary(steps: MapSteps) -> str:
    """The numbers of a map's steps in one sentence, e.g. "The top 8 of 1280 channels carry 41% of
    Σ|W·A|; 23% of the sum before the ReLU is negative (19 of 49 positions), and the ReLU removes it."
    """
    count = steps.record.layer_channels
    top = min(TOP_CHANNELS, count)
    height, width = steps.weighted_sum.shape
    negative = steps.negative_share()
    relu = (
        "the sum before the ReLU is positive everywhere, so the ReLU changes nothing"
        if negative == 0
        else f"{percent(negative)} of the sum before the ReLU is negative ({steps.negative_positions()} of "
        f"{height * width} positions), and the ReLU removes it"
    )
    return (
        f"The top {top} of {count} channels carry {percent(steps.top_share(top))} of Σ|W·A| (all channels' "
        f"terms, either sign); {relu}."
    )
