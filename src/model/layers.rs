//! The layers the models are made of. Each takes its weights by name prefix at construction and
//! records its ops into a [`Graph`] in `forward`.

use std::sync::Arc;

use crate::graph::{Graph, HostBatchNorm, HostConv, Op, Value};
use crate::kernels::conv2d::{dense_from_grouped, Conv2dOptions};
use crate::weights::{Init, VarBuilder};

/// `nn.Conv2d`: `weight` `[out, in / groups, k, k]` and, when it has one, `bias` `[out]`.
pub struct Conv2d {
    name: String,
    /// The weights as read; grouped ones still `[out, in / groups, k, k]`.
    weights: Arc<HostConv>,
    groups: usize,
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
        let shape = [cout, cin, kernel, kernel];
        let weight = vb.get("weight", &shape, Init::Conv);
        let bias = bias.then(|| vb.get("bias", &[cout], Init::Bias));
        Conv2d {
            name: vb.prefix().to_string(),
            weights: Arc::new(HostConv {
                shape,
                weight,
                bias,
                affine: None,
            }),
            groups: 1,
            opts: Conv2dOptions::new(stride, padding),
        }
    }

    /// A convolution of `groups` groups without bias (ResNeXt's 3x3 convs): reads `weight`
    /// `[cout, cin / groups, k, k]`, and records it as the dense block-diagonal convolution
    /// [`dense_from_grouped`] makes, which every kernel and graph pass runs unchanged.
    pub fn grouped(
        vb: &VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Self {
        let shape = [cout, cin / groups.max(1), kernel, kernel];
        Conv2d {
            name: vb.prefix().to_string(),
            weights: Arc::new(HostConv {
                shape,
                weight: vb.get("weight", &shape, Init::Conv),
                bias: None,
                affine: None,
            }),
            groups: groups.max(1),
            opts: Conv2dOptions::new(stride, padding),
        }
    }

    /// Records the convolution of `x`. Grouped weights are expanded only here, once every
    /// tensor's shape has been checked: expanding sizes read from an unchecked file could ask
    /// for any amount of memory.
    pub fn forward(&self, g: &mut Graph, x: Value) -> Value {
        let weights = match self.groups {
            1 => self.weights.clone(),
            groups => {
                let [cout, cin_g, kh, kw] = self.weights.shape;
                Arc::new(HostConv {
                    shape: [cout, cin_g * groups, kh, kw],
                    // The config is validated and the shape checked, so the groups divide.
                    weight: dense_from_grouped(&self.weights.weight, self.weights.shape, groups)
                        .unwrap_or_default(),
                    bias: None,
                    affine: None,
                })
            }
        };
        g.push(
            &self.name,
            Op::Conv2d {
                weights,
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
        g.push(&self.name, Op::BatchNorm(self.params.clone()), &[x])
    }
}

/// Records `relu(x)`, named after the op it follows.
pub fn relu(g: &mut Graph, x: Value) -> Value {
    let name = format!("{}.relu", g.nodes()[x].name);
    g.push(name, Op::Relu, &[x])
}
