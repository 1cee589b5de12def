"""The model's sections of the config: backbone, dynamic encoder, dynamic decoder, dense head.

Every field says what it means and where its default comes from ("Source:"): the paper (docs/paper.md), a
cited work, or "ours" (a choice of this repository). Measured effects are in docs/recipe.md and
docs/benchmarks.md, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackboneConfig:
    depth: int = 50
    """ResNet depth: 18, 34, 50 or 101. Source: the paper (ResNet-50)."""
    weights: str | None = None
    """None (random init), a torchvision weights name ("DEFAULT", "IMAGENET1K_V1",
    "ResNet50_Weights.IMAGENET1K_V2") or a path to a local .pth / .safetensors state dict. Source: the paper
    (ImageNet weights; `paper_r50` sets them)."""
    norm: str = "auto"
    """"frozen_bn" | "bn" | "gn" | "auto". Frozen BN is right for pretrained weights but is an identity at random
    init (docs/paper.md), so "auto" picks frozen_bn when weights are loaded and trainable BN otherwise.
    "gn": GroupNorm(32) throughout the trunk, batch-size independent, for training from scratch; ImageNet
    weights load into it (the affine parameters), their BN statistics are dropped. Source: the paper (frozen
    BN); "auto" ours; "gn" He et al. 2019, "Rethinking ImageNet Pre-training"."""
    frozen_stages: int = 1
    """Stem + this many ResNet stages get no gradient. Only applied when weights are loaded: freezing random
    weights would freeze noise. Source: the paper (stem and stage 1)."""
    padding_aware: bool = False
    """Zero the padded region (bottom / right, where a batch pads its images) after every norm layer, the stem's
    max-pool and the FPN's convs, so that an image's trunk and FPN features do not depend on how much padding
    its batch adds, as the encoder, dense head and RoI pooling already do (model/padding.py): eval at batch 1
    and at batch 8 then agree. Exact for BN and frozen BN in eval mode (a "gn" trunk's statistics still see
    the padding). Source: ours."""


@dataclass
class EncoderConfig:
    enabled: bool = True
    """Ablation switch: False gives the plain FPN pyramid. Source: the paper (its encoder ablation,
    docs/paper.md)."""
    num_blocks: int = 6
    """Dynamic encoder blocks. Source: the paper (6)."""
    gn_groups: int = 16
    """GroupNorm groups after each deformable conv. Source: DyHead (the paper's encoder block)."""
    share_levels: bool = True
    """Share a block's offset conv, deformable convs, scale attention and DyReLU across levels; False gives
    each level its own (5x the encoder parameters, same FLOPs). Source: DyHead (shares them)."""
    scale_fine_offsets: bool = True
    """The paper leaves open how s_i (predicted in level-i pixels) applies to the finer neighbour's stride-2
    conv: True doubles it so all three convs shift by the same image distance (the coarser neighbour's is
    pooled and halved; docs/paper.md); False uses it unscaled, as DyHead does. Source: ours (a reading of the
    paper)."""
    deform_impl: str = "auto"
    """Kernel of the modulated deformable conv (model/deform.py; all three give torchvision's result):
    "torchvision" (torchvision.ops.deform_conv2d), "sampled" (grid_sample, mask multiply, matmul), "bags" (one
    weighted embedding_bag with the mask folded into the bilinear weights, then one matmul) or "auto" (bags on
    CPU, torchvision on CUDA): the CPU kernels exist for speed (docs/recipe.md, "Figures behind the config's
    defaults"). Source: ours (the operator is Deformable ConvNets v2's)."""
    scale_attn_relu: bool = False
    """DyHead's scale attention is hard_sigmoid(ReLU(conv1x1(pool))); the ReLU makes a negative logit a unit
    without gradient, so it is off by default (hard_sigmoid alone, still 0.5 at init). Source: ours (DyHead
    has the ReLU)."""
    residual: bool = False
    """Each block becomes out = x + g * block(x) with a learned gate g initialised to `gate_init`, so that
    the untrained encoder starts as the identity and the decoder sees the FPN features unscrambled (neither
    the paper nor DyHead has a gate). Measured effect: docs/benchmarks.md (convergence ladder). Source: ReZero
    (Bachlechner et al. 2020); a recipe switch (docs/recipe.md)."""
    gate: str = "block"
    """Shape of the residual gate g (with `residual`): "block" = one scalar per block, "channel" = one per
    level and channel (each level opens on its own). Source: ReZero ("block"); LayerScale, Touvron et al.
    2021 ("channel"). Not in the paper."""
    gate_init: float = 0.0
    """Initial value of every residual gate: 0 (ReZero) or a small non-zero value such as 0.1 (LayerScale),
    so that the block's output has a gradient path from the first step. Source: ReZero / LayerScale. Not in
    the paper."""
    dynamic: bool = True
    """False gives a static control (an experiment's arm, docs/benchmarks.md): the same convolutions at the
    same cost, with nothing dynamic left: offsets frozen at 0, modulation masks at 0.5, scale attention at 0.5
    and DyReLU a plain ReLU (their layers frozen at that init). It separates "dynamic attention" from "more
    convolutions". Source: ours; True is the paper."""
    levels: int = 0
    """The blocks run on the finest `levels` pyramid levels (P3 first); the coarser ones pass through
    unchanged (the FPN's features) and still serve as the coarser neighbour of the last one run. 0 = all
    levels (the paper). At CPU image sizes (<= 320 px) the RoIs are pooled from P3 and the dense head's
    positives fall on P3-P4, so the blocks' work on P5-P7 feeds little that the losses read. Source: ours."""
    checkpoint: bool = False
    """Activation checkpointing of each block (model/checkpointing.py): its training activations are
    recomputed in the backward instead of kept. Same outputs and gradients; less memory, a longer step
    (docs/benchmarks.md, "Memory"). Source: ours (PyTorch's torch.utils.checkpoint)."""


@dataclass
class DecoderConfig:
    num_stages: int = 6
    """Dynamic decoder stages; fewer is the paper's ablation (docs/paper.md). Source: the paper (6)."""
    eval_stages: int = 0
    """Inference only: run the first N decoder stages (0 = all `num_stages`) and read the detections from stage
    N's heads. Every stage is supervised in training (deep supervision), so every stage's heads can answer: fewer
    stages trade AP for latency without retraining. Training always runs all stages. Set on a trained model by
    `predict` / `eval` / `export` / `serve --decoder-stages N` (`DynamicDETR.set_eval_stages`). Source: RT-DETR
    (decoder depth adjustable at inference). Not in the paper."""
    num_queries: int = 300
    """Object queries K. Source: the paper (300)."""
    num_heads: int = 4
    """Heads of the query self-attention. Source: the paper (4, docs/paper.md)."""
    roi_size: int = 7
    """RoIAlign output size. Source: the paper (7x7)."""
    roi_impl: str = "auto"
    """Kernel of the RoIAlign: "torchvision" (torchvision.ops.roi_align), "bags" (one weighted embedding_bag,
    model/roi.py: same result; torchvision's CPU backward is single-threaded) or "auto" (bags on CPU,
    torchvision on CUDA). ONNX export always uses torchvision's (an ONNX RoiAlign node). Source: ours."""
    dim_dynamic: int = 64
    """Bottleneck of the dynamic 1x1 filters. Source: Sparse R-CNN (64; the paper does not state it)."""
    dim_feedforward: int = 2048
    """Hidden width of the per-stage FFN. Source: DETR / Sparse R-CNN (2048; the paper does not state it)."""
    dropout: float = 0.0
    """Dropout in attention / FFN. Source: Sparse R-CNN (0; the paper does not state it)."""
    detach_boxes: bool = True
    """Stop the gradient through the box fed to the next stage. Source: Sparse R-CNN (docs/paper.md, Dynamic
    decoder)."""
    box_pos: str = "sine"
    """Position of each query's box in its self-attention: "sine" (sine embedding of cxcywh + 2-layer MLP,
    added to q and k) or "none" (content only). Source: DAB-DETR ("sine"); Sparse R-CNN ("none")."""
    num_reg_layers: int = 1
    """(FC, LN, ReLU) layers before the box-delta FC. Source: the paper (B^ = refine(B, FC(ReLU(LN(FC(Q^))))):
    1); Sparse R-CNN uses 3."""
    zero_init_deltas: bool = True
    """Zero-init the last box-delta layer so every stage starts as the identity refinement; with Xavier init
    (Sparse R-CNN) the untrained later stages scatter the boxes and their early losses are worse than stage
    1's. Source: Deformable DETR (does this for its box head)."""
    num_cls_layers: int = 0
    """(FC, LN, ReLU) layers before the class FC. Source: the paper (C^ = Softmax(FC(Q^)): 0); Sparse R-CNN
    uses 1."""
    roi_canonical_size: int = 224
    """RoI level rule: a box of this size (sqrt of its area, input pixels) is pooled from P4 and each doubling
    one level up. At <= 320 px inputs 224 sends every box to P3. Source: FPN (224, the ImageNet size)."""
    query_selection: str = "none"
    """Where the initial boxes come from. "none": learned boxes, all the whole image (the paper).
    "boxes": the dense head's top-K boxes of each image, with learned content; "boxes+content": also the
    content, from the encoder feature at each selected position. Needs `model.dense.enabled`. Source: DINO's
    mixed query selection ("boxes"); two-stage Deformable DETR, RT-DETR ("boxes+content"). Not in the paper."""
    query_nms: float = 0.0
    """Distinct queries, with query selection: the K initial boxes are chosen after a class-agnostic NMS at
    this IoU over the dense head's top 4K (`model.dense_head.select_queries`), so that the queries start on
    distinct objects instead of K near-copies of the few best boxes, and the one-to-one matching no longer has
    to teach the decoder to suppress them. 0 = off (plain top-K). Training and inference. Measured effect:
    docs/recipe.md. Source: DDQ (Zhang et al. 2023: 0.7 for its R-CNN / FCN, ours is R-CNN-like; 0.8 for DDQ
    DETR). Not in the paper."""
    num_hybrid_queries: int = 0
    """Training only: this many extra queries (the dense head's next top-K boxes with query selection, else
    learned) matched one-to-many (each target repeated `loss.hybrid_k` times), in their own attention group.
    0 = off. Source: H-DETR's hybrid branch. Not in the paper."""
    dn_queries: int = 0
    """Denoising, training only: up to this many extra queries per image, groups of noised ground-truth boxes
    (and labels), each supervised by its own target at every stage, in attention groups the matching queries
    never see. 0 = off. Source: DN-DETR / DINO. Not in the paper."""
    dn_box_noise: float = 0.4
    """Denoising box noise scale lambda: centres move up to lambda * w / 2, sides scale by up to
    1 +- lambda. Source: DN-DETR (0.4)."""
    dn_label_noise: float = 0.2
    """Denoising: probability that a noised query carries a random label instead of its own. Source: DN-DETR
    (0.2)."""
    checkpoint: bool = False
    """Activation checkpointing of each stage (model/checkpointing.py): its training activations are
    recomputed in the backward instead of kept. Same outputs and gradients; less memory, a longer step
    (docs/benchmarks.md, "Memory"). Source: ours (PyTorch's torch.utils.checkpoint)."""


@dataclass
class DenseHeadConfig:
    enabled: bool = False
    """An FCOS head on the dynamic encoder's pyramid, one-to-many: every location inside a target's centre
    region is a positive. Training loss only, unless `decoder.query_selection` uses its top-K boxes as the
    decoder's initial boxes. Source: Co-DETR's dense auxiliary head; FCOS. Not in the paper."""
    num_convs: int = 2
    """3x3 conv + GroupNorm + ReLU layers in each of the class and box towers. Source: ours (FCOS uses 4)."""
    center_radius: float = 1.5
    """FCOS centre sampling: a location is a positive when within radius x stride of a target's centre
    (and inside it); a target with no such location gets its nearest location. Source: FCOS (1.5)."""
    checkpoint: bool = False
    """Activation checkpointing of the head (model/checkpointing.py): its training activations are recomputed
    in the backward instead of kept. Same outputs and gradients; less memory, a longer step
    (docs/benchmarks.md, "Memory"). Source: ours (PyTorch's torch.utils.checkpoint)."""


@dataclass
class ModelConfig:
    num_classes: int = 80
    """Number of object classes; `train` sets it from the dataset. Source: COCO (80)."""
    category_ids: list[int] = field(default_factory=list)
    """Dataset category id of each contiguous label (any ids, e.g. COCO's 1..90); `train` fills it.
    Empty: `postprocess` returns the contiguous labels themselves. Source: ours."""
    class_names: list[str] = field(default_factory=list)
    """Name of each contiguous label, for drawing and reports; `train` fills it. Source: ours."""
    hidden_dim: int = 256
    """Channels of the FPN / encoder and width of the object queries. Source: the paper (256)."""
    class_loss: str = "focal"
    """"focal" (sigmoid, no background class) or "softmax" (cross-entropy with a no-object class). Source:
    the paper writes a softmax; the focal default is ours (it trained better here, docs/paper.md)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The ResNet trunk and its FPN. Source: the paper."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The dynamic encoder (DyHead-style blocks over the pyramid). Source: the paper."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """The dynamic decoder (RoI pooling + dynamic convs per query). Source: the paper."""
    dense: DenseHeadConfig = field(default_factory=DenseHeadConfig)
    """The optional dense (FCOS) head. Source: Co-DETR (a recipe switch, docs/recipe.md)."""

    def names(self) -> dict[int, str]:
        """Dataset category id -> class name (for drawing and reports; empty before `train` fills them)."""
        return dict(zip(self.category_ids, self.class_names, strict=False))
