//! The layers the models are made of. Each takes its weights by name prefix at construction and
//! records its ops into a [`Graph`] in `forward`.

use std::sync::Arc;

use crate::graph::ops::{self, Conv2dOptions, HostBatchNorm, HostConv, HostLinear, Relu};
use crate::graph::{Graph, Value};
use crate::weights::{Init, VarBuilder};

/// `nn.Conv2d`: `weight` `[out, in / groups, k, k]` and, when it has one, `bias` `[out]`.
pub struct Conv2d {
    name: String,
    /// The weights as read: `[out, in / groups, k, k]`.
    weights: Arc<HostConv>,
    opts: Conv2dOptions,
}

impl Conv2d {
    /// Reads `{prefix}.weight` (and `{prefix}.bias` when `bias`) from `vb`.
    pub fn new(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Self {
        let bias = bias.then_some(Init::Bias);
        Self::with_bias_init(vb, cin, cout, kernel, stride, padding, bias)
    }

    /// [`Conv2d::new`] whose bias, when `bias` names its random initialisation, is drawn from
    /// that rather than [`Init::Bias`] (for outputs whose range random weights should mimic).
    pub fn with_bias_init(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: Option<Init>,
    ) -> Self {
        let shape = [cout, cin, kernel, kernel];
        let weight = vb.get("weight", &shape, Init::Conv);
        let bias = bias.map(|init| vb.get("bias", &[cout], init));
        Conv2d {
            name: vb.prefix().to_string(),
            weights: Arc::new(HostConv {
                shape,
                weight,
                bias,
                affine: None,
            }),
            opts: Conv2dOptions::new(stride, padding),
        }
    }

    /// A convolution of `groups` groups without bias (ResNeXt's 3x3 convs): reads `weight`
    /// `[cout, cin / groups, k, k]` and records it as it is, a grouped convolution.
    pub fn grouped(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Self {
        let groups = groups.max(1);
        // Each output channel reads `cin / groups` input channels: the weight of a dense
        // convolution over that many.
        let mut conv = Conv2d::new(vb, cin / groups, cout, kernel, stride, padding, false);
        conv.opts = conv.opts.with_groups(groups);
        conv
    }

    /// Records the convolution of `x`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        g.push(
            &self.name,
            ops::Conv2d {
                weights: self.weights.clone(),
                opts: self.opts,
            },
            &[x],
        )
    }
}

/// `nn.Linear`: `weight` `[out, in]` and, when it has one, `bias` `[out]`; the box head's
/// `fc6` and `fc7` and the box predictor's `cls_score` and `bbox_pred`. Its input is flattened
/// from the second dimension, as `TwoMLPHead` does with RoIAlign's `[R, C, S, S]`.
pub struct Linear {
    name: String,
    weights: Arc<HostLinear>,
    relu: bool,
}

impl Linear {
    /// Reads `{prefix}.weight` `[out_features, in_features]` (and `{prefix}.bias`
    /// `[out_features]` when `bias`) from `vb`. A missing or mis-shaped tensor is a problem
    /// [`VarStore::finish`](crate::weights::VarStore::finish) reports under its full name.
    pub fn new(vb: &VarBuilder, in_features: usize, out_features: usize, bias: bool) -> Self {
        // Init::Conv draws from +-sqrt(3 / fan_in), fan_in being the weight's second
        // dimension: in_features here, as for a 1x1 convolution.
        let weight = vb.get("weight", &[out_features, in_features], Init::Conv);
        let bias = bias.then(|| vb.get("bias", &[out_features], Init::Bias));
        Linear {
            name: vb.prefix().to_string(),
            weights: Arc::new(HostLinear {
                out_features,
                in_features,
                weight,
                bias,
            }),
            relu: false,
        }
    }

    /// The same layer followed by a ReLU, fused into its kernel (`F.relu(fc6(x))`).
    pub fn with_relu(self) -> Self {
        Linear { relu: true, ..self }
    }

    /// Input features: `C*H*W` of what it is fed.
    pub fn in_features(&self) -> usize {
        self.weights.in_features
    }

    /// Output features: the channels of its `[M, out, 1, 1]` output.
    pub fn out_features(&self) -> usize {
        self.weights.out_features
    }

    /// Records the layer on `x` `[M, C, H, W]`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        g.push(
            &self.name,
            ops::Linear {
                weights: self.weights.clone(),
                relu: self.relu,
            },
            &[x],
        )
    }
}

/// `nn.BatchNorm2d` in eval mode: `weight`, `bias`, `running_mean`, `running_var`.
pub struct BatchNorm2d {
    name: String,
    params: Arc<HostBatchNorm>,
}

impl BatchNorm2d {
    /// Reads the four per-channel tensors under `vb`'s prefix.
    pub fn new(vb: &VarBuilder, channels: usize, eps: f32) -> Self {
        let c = [channels];
        BatchNorm2d {
            name: vb.prefix().to_string(),
            params: Arc::new(HostBatchNorm {
                weight: vb.get("weight", &c, Init::BnWeight),
                bias: vb.get("bias", &c, Init::BnBias),
                mean: vb.get("running_mean", &c, Init::BnMean),
                var: vb.get("running_var", &c, Init::BnVar),
                eps,
            }),
        }
    }

    /// Records the batch norm of `x`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        g.push(&self.name, ops::BatchNorm(self.params.clone()), &[x])
    }
}

/// Records `relu(x)`, named after the op it follows.
pub fn relu(g: &mut Graph, x: Value) -> Value {
    let name = format!("{}.relu", g.nodes()[x].name);
    g.push(name, Relu, &[x])
}

/// `nn.ConvTranspose2d` (groups 1): `weight` `[in, out, kh, kw]` and, when it has one, `bias`
/// `[out]`; Mask R-CNN's `mask_predictor.conv5_mask`.
pub struct ConvTranspose2d {
    name: String,
    weights: Arc<ops::HostConvTranspose>,
    opts: ops::ConvTranspose2dOptions,
}

impl ConvTranspose2d {
    /// Reads `{prefix}.weight` `[cin, cout, kernel, kernel]` (and `{prefix}.bias` when `bias`)
    /// from `vb`; `opts` gives the stride, padding and whether a ReLU follows (fused).
    pub fn new(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        bias: bool,
        opts: ops::ConvTranspose2dOptions,
    ) -> Self {
        let shape = [cin, cout, kernel, kernel];
        let weight = vb.get("weight", &shape, Init::Conv);
        let bias = bias.then(|| vb.get("bias", &[cout], Init::Bias));
        ConvTranspose2d {
            name: vb.prefix().to_string(),
            weights: Arc::new(ops::HostConvTranspose {
                shape,
                weight,
                bias,
            }),
            opts,
        }
    }

    /// Records the transposed convolution of `x`.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        g.push(
            &self.name,
            ops::ConvTranspose2d {
                weights: self.weights.clone(),
                opts: self.opts,
            },
            &[x],
        )
    }
}
