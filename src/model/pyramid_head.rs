//! The FPN of torchvision (`FeaturePyramidNetwork`), detectron2 (`FPN`) and mmdetection (the
//! `FPN` neck): one network under three sets of names (`naming::PyramidNames`). 1x1 lateral
//! convs on the returned backbone stages, a nearest-neighbour top-down path, a 3x3 output conv
//! on every level (the coarsest included), each conv with an optional batch norm, then the
//! extra levels: max pools, or stride-2 convs as RetinaNet's `LastLevelP6P7` and mmdetection's
//! `add_extra_convs` make them.

use crate::graph::ops::{MaxPool2d, MaxPool2dOptions, UpsampleAdd, UpsampleMode};
use crate::graph::{Graph, Value};
use crate::model::config::{ExtraLevels, ExtraSource, FpnConfig};
use crate::model::layers::{relu, BatchNorm2d, Conv2d};
use crate::model::naming::{ConvNorm, PyramidNames};
use crate::weights::VarBuilder;

/// A conv with a bias, or without one and followed by a batch norm (folded into it by the graph
/// passes).
struct NormConv {
    conv: Conv2d,
    norm: Option<BatchNorm2d>,
}

impl NormConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: &VarBuilder,
        names: &ConvNorm,
        norm: bool,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        eps: f32,
    ) -> Self {
        let conv = Conv2d::new(
            &vb.pp(&names.conv),
            cin,
            cout,
            kernel,
            stride,
            kernel / 2,
            !norm,
        );
        NormConv {
            conv,
            norm: norm.then(|| BatchNorm2d::new(&vb.pp(&names.norm), cout, eps)),
        }
    }

    fn forward(&self, g: &mut Graph, x: Value) -> Value {
        let y = self.conv.forward(g, x);
        match &self.norm {
            Some(bn) => bn.forward(g, y),
            None => y,
        }
    }
}

enum Extra {
    None,
    MaxPool(usize),
    Convs {
        convs: Vec<NormConv>,
        source: ExtraSource,
        relu: bool,
    },
}

/// One (lateral, output) conv pair per returned backbone stage, and the extra levels.
pub struct PyramidHead {
    /// Backbone stage (0 the stem, 1..=4 for C2..C5), lateral 1x1 conv, output 3x3 conv;
    /// finest first.
    levels: Vec<(usize, NormConv, NormConv)>,
    extra: Extra,
    upsample: UpsampleMode,
}

impl PyramidHead {
    /// Reads the lateral and output convs of every returned stage and the extra convs, named as
    /// `config.layout` names them, under `vb`.
    pub fn new(vb: &VarBuilder, config: &FpnConfig) -> Self {
        let p = config.pyramid_channels;
        let eps = config.bn_eps;
        let stages = config.returned_stages();
        let names = PyramidNames::new(config.layout, stages.len());
        let norm = config.fpn_norm;
        let levels = stages
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let cin = config.stage_channels(s);
                (
                    s,
                    NormConv::new(vb, &names.lateral(i, s), norm, cin, p, 1, 1, eps),
                    NormConv::new(vb, &names.output(i, s), norm, p, p, 3, 1, eps),
                )
            })
            .collect();
        let extra = match config.extra {
            ExtraLevels::None => Extra::None,
            ExtraLevels::MaxPool(n) => Extra::MaxPool(n),
            ExtraLevels::Convs {
                count,
                source,
                relu,
            } => {
                // "C5" is the coarsest returned stage, whichever that is.
                let top = stages.last().copied().unwrap_or(4);
                let norm = norm && names.extra_has_norm();
                let convs = (0..count)
                    .map(|j| {
                        let cin = match (j, source) {
                            (0, ExtraSource::Input) => config.stage_channels(top),
                            _ => p,
                        };
                        NormConv::new(vb, &names.extra(j), norm, cin, p, 3, 2, eps)
                    })
                    .collect();
                Extra::Convs {
                    convs,
                    source,
                    relu,
                }
            }
        };
        PyramidHead {
            levels,
            extra,
            upsample: config.upsample,
        }
    }

    /// Records the head on the backbone's stages (`c[s]` for stage `s`) and returns the levels
    /// finest first, named by their stride (`p3` has stride 8): the returned stages', then the
    /// extra ones.
    pub fn forward(&self, g: &mut Graph, c: &[Value]) -> Vec<(String, Value)> {
        g.set_stage("top-down");
        let mut merged = vec![0; self.levels.len()];
        let mut coarse: Option<Value> = None;
        let mut top_lateral = None;
        for (i, (s, lateral, _)) in self.levels.iter().enumerate().rev() {
            let lat = lateral.forward(g, c[*s]);
            if top_lateral.is_none() {
                top_lateral = Some(lat);
            }
            let v = match coarse {
                None => lat,
                Some(top) => g.push(
                    format!("topdown{}", s + 1),
                    UpsampleAdd(self.upsample),
                    &[top, lat],
                ),
            };
            merged[i] = v;
            coarse = Some(v);
        }
        g.set_stage("smooth");
        let mut out: Vec<(String, Value)> = self
            .levels
            .iter()
            .zip(&merged)
            .map(|((s, _, smooth), &m)| (format!("p{}", s + 1), smooth.forward(g, m)))
            .collect();
        let Some(top_stage) = self.levels.last().map(|l| l.0) else {
            return out;
        };
        let mut level = top_stage + 2;
        g.set_stage("extra");
        match &self.extra {
            Extra::None => {}
            Extra::MaxPool(n) => {
                for k in 0..*n {
                    let last = out[out.len() - 1].1;
                    // torchvision calls its one pool level `pool`; the graph names it by level.
                    let name = if k == 0 {
                        "pool".to_string()
                    } else {
                        format!("pool{k}")
                    };
                    let v = g.push(name, MaxPool2d(MaxPool2dOptions::new(1, 2, 0)), &[last]);
                    out.push((format!("p{level}"), v));
                    level += 1;
                }
            }
            Extra::Convs {
                convs,
                source,
                relu: relu_between,
            } => {
                let mut x = match source {
                    ExtraSource::Input => c[top_stage],
                    ExtraSource::Lateral => top_lateral.unwrap_or(out[out.len() - 1].1),
                    ExtraSource::Output => out[out.len() - 1].1,
                };
                for (j, conv) in convs.iter().enumerate() {
                    if j > 0 && *relu_between {
                        x = relu(g, x);
                    }
                    x = conv.forward(g, x);
                    out.push((format!("p{level}"), x));
                    level += 1;
                }
            }
        }
        out
    }
}
