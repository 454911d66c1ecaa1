//! The layers the models are made of. Each takes its weights by name prefix at construction and
//! records its ops into a [`Graph`] in `forward`.

use std::sync::Arc;

use crate::graph::ops::{self, Conv2dOptions, HostBatchNorm, HostConv, Relu};
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
